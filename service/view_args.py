"""Arguments of the view messages, checked: ranges, selections, spans and the self-attention rule,
each refusal a precise INVALID_ARGUMENT or OUT_OF_RANGE (shared by view_table and reading_views)."""

from __future__ import annotations

from ..extract import analysis
from .errors import InvalidArgument


def range_slice(r, has: bool) -> slice | None:
    if not has:
        return None
    if r.start < 0 or r.stop < 0:
        raise InvalidArgument(f"ranges take non-negative positions, got [{r.start}, {r.stop})")
    return slice(r.start, r.stop if r.stop else None)


def range_length(r, has: bool, total: int) -> int:
    return len(range(total)[range_slice(r, has) or slice(None)])


def selection(sel) -> tuple[list[int] | None, list[int] | None]:
    """(layers, heads) of a Selection, None = all; a repeated entry is refused, not recomputed."""
    out = []
    for what, values in (("layers", list(sel.layers)), ("heads", list(sel.heads))):
        if len(set(values)) != len(values):
            repeated = next(v for v in values if values.count(v) > 1)
            raise InvalidArgument(
                f"selection {what} lists {repeated} {values.count(repeated)} times; list each once"
            )
        out.append(values or None)
    return out[0], out[1]


def count(selected: list[int] | None, total: int) -> int:
    return len(selected) if selected else total


def invalid(check, *args):
    """`check(*args)`, with its ValueError as INVALID_ARGUMENT (positions out of range included)."""
    try:
        return check(*args)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def self_attention(trace, kind, what: str) -> None:
    _, _, lq, lk = trace.shape(kind)
    resolved = kind or trace.default_kind
    if resolved == "cross" or lq != lk:
        raise InvalidArgument(
            f"{what} needs self-attention (queries and keys the same tokens); {resolved} attention is "
            f"{lq} queries × {lk} keys: ask for KIND_ENCODER or KIND_DECODER"
        )


def span_ranges(ranges, length: int, what: str) -> list[tuple[int, int]]:
    """(start, stop) pairs of Range messages (stop 0 = to the end), checked by analysis.check_spans."""
    spans = []
    for r in ranges:
        if r.start < 0 or r.stop < 0:
            raise InvalidArgument(f"{what} take non-negative positions, got [{r.start}, {r.stop})")
        spans.append((r.start, r.stop or length))
    return invalid(analysis.check_spans, spans, length, what)
