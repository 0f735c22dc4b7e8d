"""Computing the views a request names from a `Trace`, within the server's limits.

Also the small constructors clients use to name views (`pooled(...)`, `tile(...)`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .. import proto
from ..extract import Trace
from ..kernels import HEAD_STAT_NAMES
from .errors import InvalidArgument, ResourceExhausted

DEFAULT_POOLED = 256


# ---- constructors for clients ------------------------------------------------------------------
def _range(span: tuple[int, int] | None):
    return None if span is None else proto.Range(start=span[0], stop=span[1])


def pooled(size: int = 0, layers=(), heads=(), kind: str = "", name: str = ""):
    return proto.ViewRequest(
        name=name,
        kind=kind,
        pooled=proto.PooledView(size=size, selection=proto.Selection(layers=list(layers), heads=list(heads))),
    )


def head_stats(kind: str = "", name: str = ""):
    return proto.ViewRequest(name=name, kind=kind, head_stats=proto.HeadStatsView())


def received(layers=(), heads=(), kind: str = "", name: str = ""):
    return proto.ViewRequest(
        name=name,
        kind=kind,
        received=proto.ReceivedView(selection=proto.Selection(layers=list(layers), heads=list(heads))),
    )


def tile(layer: int, head: int, queries=None, keys=None, kind: str = "", name: str = ""):
    return proto.ViewRequest(
        name=name,
        kind=kind,
        tile=proto.TileView(layer=layer, head=head, queries=_range(queries), keys=_range(keys)),
    )


def topk(layer: int, head: int, k: int, queries=None, kind: str = "", name: str = ""):
    return proto.ViewRequest(
        name=name, kind=kind, topk=proto.TopkView(layer=layer, head=head, k=k, queries=_range(queries))
    )


def neuron(layer: int, head: int, query: int, keys=None, kind: str = "", name: str = ""):
    return proto.ViewRequest(
        name=name, kind=kind, neuron=proto.NeuronView(layer=layer, head=head, query=query, keys=_range(keys))
    )


def default_views() -> list:
    """What Extract returns when no view is named."""
    return [head_stats(), pooled()]


# ---- server side -------------------------------------------------------------------------------
def _slice(r, has: bool) -> slice | None:
    if not has:
        return None
    if r.start < 0 or r.stop < 0:
        raise InvalidArgument(f"ranges take non-negative positions, got [{r.start}, {r.stop})")
    return slice(r.start, r.stop if r.stop else None)


def _selection(sel) -> tuple[list[int] | None, list[int] | None]:
    return (list(sel.layers) or None), (list(sel.heads) or None)


def _count(selected: list[int] | None, total: int) -> int:
    return len(selected) if selected else total


def compute(
    trace: Trace,
    views: list,
    max_pooled: int,
    max_elements: int,
    check_deadline: Callable[[], None] = lambda: None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(tensor name, array) for every view in `views`; limits are checked before any work."""
    planned = []
    total = 0
    for index, view in enumerate(views):
        which = view.WhichOneof("view")
        if which is None:
            raise InvalidArgument(
                f"view {index} names no view: set one of pooled, head_stats, received, tile, topk, neuron"
            )
        kind = view.kind or None
        layers, heads, lq, lk = trace.shape(kind)
        name = view.name or (which if which in ("pooled", "head_stats", "received") else f"{which}/{index}")
        spec = getattr(view, which)
        if which == "pooled":
            size = spec.size or min(DEFAULT_POOLED, max(lq, lk))
            if spec.size < 0:
                raise InvalidArgument(
                    f"pooled size must be >= 1 (0 = default {DEFAULT_POOLED}), got {spec.size}"
                )
            if size > max_pooled:
                raise ResourceExhausted(f"pooled size {size} is over this server's limit of {max_pooled}")
            sel_l, sel_h = _selection(spec.selection)
            elements = _count(sel_l, layers) * _count(sel_h, heads) * min(size, lq) * min(size, lk)
        elif which == "head_stats":
            elements = len(HEAD_STAT_NAMES) * layers * heads
        elif which == "received":
            sel_l, sel_h = _selection(spec.selection)
            elements = _count(sel_l, layers) * _count(sel_h, heads) * lk
        elif which == "tile":
            q = range(lq)[_slice(spec.queries, spec.HasField("queries")) or slice(None)]
            k = range(lk)[_slice(spec.keys, spec.HasField("keys")) or slice(None)]
            elements = len(q) * len(k)
        elif which == "topk":
            q = range(lq)[_slice(spec.queries, spec.HasField("queries")) or slice(None)]
            elements = 2 * len(q) * max(spec.k, 0)
        else:
            k = range(lk)[_slice(spec.keys, spec.HasField("keys")) or slice(None)]
            elements = len(k) * (2 * trace.layer_qk(0, kind).q.shape[-1] + 2)
        total += elements
        planned.append((name, which, kind, spec))
    if total > max_elements:
        raise ResourceExhausted(
            f"the requested views hold {total:,} values; this server returns at most {max_elements:,} per call "
            "(ask for fewer layers/heads, a smaller pooled size or smaller ranges)"
        )
    for name, which, kind, spec in planned:
        check_deadline()
        yield from _one(trace, name, which, kind, spec)


def _one(trace: Trace, name: str, which: str, kind, spec) -> Iterator[tuple[str, np.ndarray]]:
    if which == "pooled":
        layers, heads = _selection(spec.selection)
        _, _, lq, lk = trace.shape(kind)
        size = spec.size or min(DEFAULT_POOLED, max(lq, lk))
        yield name, trace.pooled(size, layers=layers, heads=heads, kind=kind).numpy()
    elif which == "head_stats":
        for stat, values in trace.head_stats(kind=kind).items():
            yield f"{name}/{stat}", values.numpy()
    elif which == "received":
        layers, heads = _selection(spec.selection)
        yield name, trace.received(layers=layers, heads=heads, kind=kind).numpy()
    elif which == "tile":
        p = trace.attention(
            spec.layer,
            spec.head,
            _slice(spec.queries, spec.HasField("queries")),
            _slice(spec.keys, spec.HasField("keys")),
            kind=kind,
        )
        yield name, p.numpy()
    elif which == "topk":
        idx, probs = trace.topk(
            spec.k, spec.layer, spec.head, _slice(spec.queries, spec.HasField("queries")), kind=kind
        )
        yield f"{name}/indices", idx.numpy()
        yield f"{name}/probs", probs.numpy()
    else:
        view = trace.neuron(
            spec.layer, spec.head, spec.query, _slice(spec.keys, spec.HasField("keys")), kind=kind
        )
        for part, values in zip(view._fields, view, strict=True):
            yield f"{name}/{part}", values.numpy()
