"""The views a request names, computed from a `Trace` within the server's limits.

One table, `VIEW_TYPES`, holds each view type's tensor parts, its cost in values (checked for the
whole request before any work) and its run function. `plan` validates a request (names, kinds,
sizes, the total cost) and fixes every tensor's name; `run_view` computes one planned view; the
server streams each view's tensors as soon as `run_view` returns them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .. import proto
from ..extract import analysis
from ..extract.selection import IndexOutOfRange
from ..kernels import HEAD_STAT_NAMES, NeuronView
from . import reading_views as reading
from .errors import InvalidArgument, ResourceExhausted, shorten
from .limits import Limits
from .view_args import count, invalid, range_length, range_slice, selection, self_attention, span_ranges

_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")
_UNLIMITED = Limits(max_pooled_size=1 << 30, max_result_values=1 << 62, max_scores=1 << 62)


def _pooled_size(spec, lq: int, lk: int, limits: Limits) -> int:
    if spec.size < 0:
        raise InvalidArgument(
            f"pooled size must be >= 1 (0 = default {limits.default_pooled_size}), got {spec.size}"
        )
    # The default never asks for more than the server allows (an operator may lower the maximum).
    size = spec.size or min(limits.default_pooled_size, limits.max_pooled_size, max(lq, lk))
    if size > limits.max_pooled_size:
        raise ResourceExhausted(f"pooled size {size} is over this server's limit of {limits.max_pooled_size}")
    return size


# ---- cost (values returned) and run (parts -> arrays) of each view type -------------------------
# Each function takes (trace, spec, kind, limits); shape = (layers, heads, Lq, Lk) of that kind.


def _pooled_cost(trace, spec, kind, limits) -> int:
    layers, heads, lq, lk = trace.shape(kind)
    size = _pooled_size(spec, lq, lk, limits)
    sel_l, sel_h = selection(spec.selection)
    return count(sel_l, layers) * count(sel_h, heads) * min(size, lq) * min(size, lk)


def _pooled_run(trace, spec, kind, limits):
    _, _, lq, lk = trace.shape(kind)
    layers, heads = selection(spec.selection)
    size = _pooled_size(spec, lq, lk, limits)
    yield "", trace.pooled(size, layers=layers, heads=heads, kind=kind)


def _head_stats_cost(trace, spec, kind, limits) -> int:
    layers, heads, _, _ = trace.shape(kind)
    return len(HEAD_STAT_NAMES) * layers * heads


def _head_stats_run(trace, spec, kind, limits):
    yield from trace.head_stats(kind=kind).items()


def _received_cost(trace, spec, kind, limits) -> int:
    layers, heads, _, lk = trace.shape(kind)
    sel_l, sel_h = selection(spec.selection)
    return count(sel_l, layers) * count(sel_h, heads) * lk


def _received_run(trace, spec, kind, limits):
    layers, heads = selection(spec.selection)
    yield "", trace.received(layers=layers, heads=heads, kind=kind)


def _tile_cost(trace, spec, kind, limits) -> int:
    _, _, lq, lk = trace.shape(kind)
    q = range_length(spec.queries, spec.HasField("queries"), lq)
    return q * range_length(spec.keys, spec.HasField("keys"), lk)


def _tile_run(trace, spec, kind, limits):
    queries = range_slice(spec.queries, spec.HasField("queries"))
    keys = range_slice(spec.keys, spec.HasField("keys"))
    yield "", trace.attention(spec.layer, spec.head, queries, keys, kind=kind)


def _topk_cost(trace, spec, kind, limits) -> int:
    _, _, lq, lk = trace.shape(kind)
    if not 1 <= spec.k <= lk:
        raise IndexOutOfRange(f"k must be in [1, {lk}] (the keys of this trace), got {spec.k}")
    return 2 * range_length(spec.queries, spec.HasField("queries"), lq) * spec.k


def _topk_run(trace, spec, kind, limits):
    indices, probs = trace.topk(
        spec.k, spec.layer, spec.head, range_slice(spec.queries, spec.HasField("queries")), kind=kind
    )
    yield "indices", indices
    yield "probs", probs


def _neuron_cost(trace, spec, kind, limits) -> int:
    _, _, _, lk = trace.shape(kind)
    return range_length(spec.keys, spec.HasField("keys"), lk) * (2 * trace.head_dim(kind) + 2)


def _neuron_run(trace, spec, kind, limits):
    view = trace.neuron(
        spec.layer, spec.head, spec.query, range_slice(spec.keys, spec.HasField("keys")), kind=kind
    )
    yield from zip(view._fields, view, strict=True)


def _rollout_args(trace, spec, kind):
    """(queries, residual, layers, heads) of a RolloutView, checked."""
    self_attention(trace, kind, "rollout")
    lq = trace.shape(kind)[2]
    if not spec.queries:
        raise InvalidArgument("rollout names no query: list at least one query position")
    bad = [q for q in spec.queries if not 0 <= q < lq]
    if bad:
        raise IndexOutOfRange(f"rollout query positions must be in [0, {lq}), got {bad[:5]}")
    residual = spec.residual if spec.HasField("residual") else 0.5
    invalid(analysis.check_residual, residual)
    layers, heads = selection(spec.selection)
    return list(spec.queries), residual, layers, heads


def _rollout_cost(trace, spec, kind, limits) -> int:
    queries, *_ = _rollout_args(trace, spec, kind)
    return len(queries) * trace.shape(kind)[2]


def _rollout_run(trace, spec, kind, limits):
    queries, residual, layers, heads = _rollout_args(trace, spec, kind)
    yield "", trace.rollout(queries, residual, heads=heads, kind=kind, layers=layers)


def _rollout_work(trace, spec, kind) -> int:
    """One pass over the selected heads of every selected layer per query."""
    return len(spec.queries) * _pass_work(trace, spec, kind)


def _span_args(trace, spec, kind):
    _, _, lq, lk = trace.shape(kind)
    spans = span_ranges(spec.spans, lq, "spans")
    key_spans = span_ranges(spec.key_spans, lk, "key_spans") if spec.key_spans else None
    if key_spans is None:
        span_ranges(spec.spans, lk, "spans (as key spans)")
    return spans, key_spans


def _span_pooled_cost(trace, spec, kind, limits) -> int:
    layers, heads, _, _ = trace.shape(kind)
    spans, key_spans = _span_args(trace, spec, kind)
    sel_l, sel_h = selection(spec.selection)
    return count(sel_l, layers) * count(sel_h, heads) * len(spans) * len(key_spans or spans)


def _span_pooled_run(trace, spec, kind, limits):
    spans, key_spans = _span_args(trace, spec, kind)
    layers, heads = selection(spec.selection)
    yield "", trace.span_pooled(spans, layers=layers, heads=heads, kind=kind, key_spans=key_spans)


def _head_classes_cost(trace, spec, kind, limits) -> int:
    layers, heads, _, _ = trace.shape(kind)
    return layers * heads


def _head_classes_run(trace, spec, kind, limits):
    import torch

    labels = trace.head_classes(kind=kind)
    layers, heads, _, _ = trace.shape(kind)
    out = torch.zeros(layers, heads, dtype=torch.int32)
    for (layer, head), label in labels.items():
        out[layer, head] = proto.HEAD_CLASS_OF_LABEL[label]
    yield "", out


def _threshold(spec, field: str, default: float | None) -> float | None:
    if not spec.HasField(field):
        return default
    return invalid(analysis.check_threshold, getattr(spec, field))


def _sinks_cost(trace, spec, kind, limits) -> int:
    _threshold(spec, "threshold", 0.2)
    return 2 * trace.shape(kind)[3]


def _sinks_run(trace, spec, kind, limits):
    import torch

    threshold = _threshold(spec, "threshold", 0.2)
    shares = analysis.key_shares(trace, kind)
    yield "positions", torch.nonzero(shares >= threshold).flatten().to(torch.int64)
    yield "shares", shares.float()


# ---- work (score evaluations) of each view type: what the cost in values does not show -----------
def _pass_work(trace, spec, kind) -> int:
    """One pass over every selected head's L×L scores (pooled maps, received attention)."""
    layers, heads, lq, lk = trace.shape(kind)
    sel_l, sel_h = selection(spec.selection)
    return count(sel_l, layers) * count(sel_h, heads) * lq * lk


def _head_stats_work(trace, spec, kind) -> int:
    layers, heads, lq, lk = trace.shape(kind)
    return layers * heads * lq * lk


def _rows_work(trace, spec, kind) -> int:
    """Every key of the requested query rows of one head (tiles, top-k)."""
    _, _, lq, lk = trace.shape(kind)
    return range_length(spec.queries, spec.HasField("queries"), lq) * lk


def _neuron_work(trace, spec, kind) -> int:
    return trace.shape(kind)[3] * max(trace.head_dim(kind), 1)


@dataclass(frozen=True)
class ViewType:
    """One view type: its tensor parts (() = a single tensor named by the view), cost and run."""

    parts: tuple[str, ...]
    cost: Callable[..., int]
    run: Callable[..., Iterator[tuple[str, object]]]
    work: Callable[..., int]
    #: Without a requested name the view is called by its type ("pooled") if True, else
    #: "<type>/<index>" (several tiles in one request are the rule, several pooled maps are not).
    named_by_type: bool


VIEW_TYPES: dict[str, ViewType] = {
    "pooled": ViewType((), _pooled_cost, _pooled_run, _pass_work, True),
    "head_stats": ViewType(HEAD_STAT_NAMES, _head_stats_cost, _head_stats_run, _head_stats_work, True),
    "received": ViewType((), _received_cost, _received_run, _pass_work, True),
    "tile": ViewType((), _tile_cost, _tile_run, _rows_work, False),
    "topk": ViewType(("indices", "probs"), _topk_cost, _topk_run, _rows_work, False),
    "neuron": ViewType(NeuronView._fields, _neuron_cost, _neuron_run, _neuron_work, False),
    "rollout": ViewType((), _rollout_cost, _rollout_run, _rollout_work, False),
    "span_pooled": ViewType((), _span_pooled_cost, _span_pooled_run, _pass_work, False),
    "head_classes": ViewType((), _head_classes_cost, _head_classes_run, _head_stats_work, True),
    "sinks": ViewType(("positions", "shares"), _sinks_cost, _sinks_run, _head_stats_work, True),
    "attention_from": ViewType(
        (), reading.attention_from_cost, reading.attention_from_run, reading.attention_from_work, False
    ),
    "retrieval": ViewType((), reading.retrieval_cost, reading.retrieval_run, reading.retrieval_work, True),
    "query_focus": ViewType(
        (), reading.query_focus_cost, reading.query_focus_run, reading.query_focus_work, False
    ),
}
assert set(VIEW_TYPES) == {f.name for f in proto.ViewRequest.DESCRIPTOR.oneofs_by_name["view"].fields}


@dataclass(frozen=True)
class PlannedView:
    index: int
    name: str
    which: str
    kind: str | None
    spec: object
    tensors: tuple[str, ...]


def _kind_name(number: int, index: int) -> str | None:
    if number not in proto.NAME_OF_KIND:
        raise InvalidArgument(f"view {index}: unknown kind {number}; one of {sorted(proto.Kind)}")
    return proto.NAME_OF_KIND[number]


def plan(trace, requests: list, limits: Limits | None = None, extra_work: int = 0) -> list[PlannedView]:
    """Validate `requests` against `trace` and `limits` and name every tensor, before any work
    (`extra_work`: score evaluations the request needs besides its views, e.g. `renormalize_work`)."""
    limits = limits or _UNLIMITED
    planned, total, work, owner, seen = [], 0, extra_work, {}, {}
    for index, view in enumerate(requests):
        which = view.WhichOneof("view")
        if which is None:
            raise InvalidArgument(f"view {index} names no view: set one of {', '.join(VIEW_TYPES)}")
        vtype = VIEW_TYPES[which]
        if view.name and not _NAME.fullmatch(view.name):
            raise InvalidArgument(
                f"view {index}: name {shorten(view.name)} must be 1-128 letters, digits or _ . - / characters"
            )
        name = view.name or (which if vtype.named_by_type else f"{which}/{index}")
        tensors = tuple(f"{name}/{part}" for part in vtype.parts) or (name,)
        for tensor in tensors:
            if tensor in owner:
                raise InvalidArgument(
                    f"views {owner[tensor]} and {index} both return a tensor named {tensor!r}; "
                    "give each view a distinct name"
                )
            owner[tensor] = index
        kind = _kind_name(view.kind, index)
        spec = getattr(view, which)
        same = (which, kind, spec.SerializeToString(deterministic=True))
        if same in seen:
            raise InvalidArgument(f"views {seen[same]} and {index} ask for the same thing; ask once")
        seen[same] = index
        total += vtype.cost(trace, spec, kind, limits)
        work += vtype.work(trace, spec, kind)
        planned.append(PlannedView(index, name, which, kind, spec, tensors))
    if total > limits.max_result_values:
        raise ResourceExhausted(
            f"the requested views hold {total:,} values; this server returns at most "
            f"{limits.max_result_values:,} per call (ask for fewer layers/heads, a smaller pooled size "
            "or smaller ranges)"
        )
    if work > limits.max_scores:
        raise ResourceExhausted(
            f"the requested views evaluate {work:.3g} attention scores; this server allows at most "
            f"{limits.max_scores:.3g} per call (ask for fewer layers, heads or views)"
        )
    return planned


# ---- a request's Renormalize: every view of a renormalised trace ---------------------------------
def _renormalize_args(trace, spec) -> tuple[str, list[int], float | None]:
    """(kind, exclude_keys, sinks threshold or None) of a Renormalize, checked (no work)."""
    if spec.kind not in proto.NAME_OF_KIND:
        raise InvalidArgument(f"renormalize: unknown kind {spec.kind}; one of {sorted(proto.Kind.values())}")
    kind = trace._kind(proto.NAME_OF_KIND[spec.kind])
    lk = trace.shape(kind)[3]
    bad = [k for k in spec.exclude_keys if not 0 <= k < lk]
    if bad:
        raise IndexOutOfRange(f"renormalize exclude_keys must be key positions in [0, {lk}), got {bad[:5]}")
    return kind, sorted(set(spec.exclude_keys)), _threshold(spec, "sinks_threshold", None)


def renormalize_work(trace, spec) -> int:
    """Score evaluations a Renormalize costs: the |E| logits of every row, and with a sinks
    threshold a pass over every head (the sinks' shares); 0 for None (no renormalisation)."""
    if spec is None:
        return 0
    kind, keys, threshold = _renormalize_args(trace, spec)
    layers, heads, lq, lk = trace.shape(kind)
    return layers * heads * lq * ((lk if threshold is not None else 0) + len(keys))


def renormalize(trace, spec) -> tuple[object, list[int]]:
    """(the trace the views read, the keys left out): `trace` itself for None or nothing to leave
    out, else `trace.renormalized(...)` without the listed keys and, given a threshold, the sinks."""
    if spec is None:
        return trace, []
    kind, keys, threshold = _renormalize_args(trace, spec)
    if threshold is not None:
        keys = sorted(set(keys) | set(trace.sinks(threshold, kind=kind)))
    return (trace.renormalized(keys, kind=kind) if keys else trace), keys


def manifest(planned: list[PlannedView]):
    return proto.ViewManifest(
        views=[proto.ViewOutput(index=v.index, name=v.name, tensors=list(v.tensors)) for v in planned]
    )


def run_view(trace, view: PlannedView, limits: Limits | None = None) -> list[tuple[str, np.ndarray]]:
    """The (tensor name, array) pairs of one planned view, in manifest order."""
    out = []
    for part, values in VIEW_TYPES[view.which].run(trace, view.spec, view.kind, limits or _UNLIMITED):
        out.append((f"{view.name}/{part}" if part else view.name, values.numpy()))
    return out


def compute(
    trace, requests: list, limits: Limits | None = None, check_deadline: Callable[[], None] = lambda: None
) -> Iterator[tuple[str, np.ndarray]]:
    """(tensor name, array) for every view in `requests`; limits are checked before any work."""
    for view in plan(trace, requests, limits):
        check_deadline()
        yield from run_view(trace, view, limits)
