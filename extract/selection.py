"""Selections the Trace API takes (layers, heads, positions, ranges), checked once for every trace
type: each raises `IndexOutOfRange` (a ValueError naming the bounds) or ValueError."""

from __future__ import annotations

from collections.abc import Iterable


class IndexOutOfRange(ValueError):
    """A layer, head, position or range outside what the trace holds (the message names the bounds)."""


Span = slice | int | range | None


def span(value: Span, length: int, what: str) -> range:
    """A non-empty, step-1 range inside [0, length) from None, an int, a slice or a range."""
    if value is None:
        return range(length)
    if isinstance(value, int) and not isinstance(value, bool):
        if not -length <= value < length:
            raise IndexOutOfRange(f"{what} index must be in [{-length}, {length}), got {value}")
        value %= length
        return range(value, value + 1)
    if isinstance(value, range):
        value = slice(value.start, value.stop, value.step)
    if not isinstance(value, slice):
        raise ValueError(f"{what} must be None, an int or a slice, got {type(value).__name__}")
    start, stop, step = value.indices(length)
    if step != 1:
        raise ValueError(f"{what} slice step must be 1, got {value.step}")
    if stop <= start:
        raise IndexOutOfRange(f"{what} slice {value} selects nothing from {length} positions")
    return range(start, stop)


def index(value: int, length: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int in [0, {length}), got {value!r}")
    if not 0 <= value < length:
        raise IndexOutOfRange(f"{what} must be in [0, {length}), got {value}")
    return value


def choose(values: int | Iterable[int] | None, length: int, what: str) -> list[int]:
    if values is None:
        return list(range(length))
    if isinstance(values, int):
        values = [values]
    chosen = [index(v, length, what) for v in values]
    if not chosen:
        raise ValueError(f"{what} selection is empty; pass None for all {length}")
    return chosen
