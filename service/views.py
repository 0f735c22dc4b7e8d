"""Request builders: the `ViewRequest`s a client sends (``views.pooled(64)``, ``views.tile(3, 5, ...)``).

Light on purpose: only the wire's message classes, no torch, so ``from attnscope import Client,
views`` works in a process that never loads a model. `kind` is the Python API's name ("encoder",
"decoder", "cross"; "" or None = the trace's default kind). `name` names the view's tensors
("<name>" or "<name>/<part>"); without one the server assigns a name and reports it in the
stream's manifest (see ViewRequest in the .proto).
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import proto


def kind_number(kind: str | None) -> int:
    """The wire's Kind for a Python kind name ("" and None = KIND_SELF)."""
    try:
        return proto.KIND_OF_NAME[kind or None]
    except KeyError:
        raise ValueError(f"kind must be one of encoder, decoder, cross or empty, got {kind!r}") from None


def _range(span: tuple[int, int] | None):
    return None if span is None else proto.Range(start=span[0], stop=span[1])


def _selection(layers: Iterable[int], heads: Iterable[int]):
    return proto.Selection(layers=list(layers), heads=list(heads))


def pooled(
    size: int = 0, layers: Iterable[int] = (), heads: Iterable[int] = (), kind: str = "", name: str = ""
):
    """Probability mass per block [layers, heads, s, s]; size 0 = the server's default."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        pooled=proto.PooledView(size=size, selection=_selection(layers, heads)),
    )


def head_stats(kind: str = "", name: str = ""):
    """Every head statistic, parts "<name>/<statistic>" [layers, heads]."""
    return proto.ViewRequest(name=name, kind=kind_number(kind), head_stats=proto.HeadStatsView())


def received(layers: Iterable[int] = (), heads: Iterable[int] = (), kind: str = "", name: str = ""):
    """Attention each key receives [layers, heads, Lk]."""
    return proto.ViewRequest(
        name=name, kind=kind_number(kind), received=proto.ReceivedView(selection=_selection(layers, heads))
    )


def tile(layer: int, head: int, queries=None, keys=None, kind: str = "", name: str = ""):
    """Exact probabilities of one head for [start, stop) query and key ranges (None = all)."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        tile=proto.TileView(layer=layer, head=head, queries=_range(queries), keys=_range(keys)),
    )


def topk(layer: int, head: int, k: int, queries=None, kind: str = "", name: str = ""):
    """Each query's k most attended keys: parts "indices" and "probs" [q, k]."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        topk=proto.TopkView(layer=layer, head=head, k=k, queries=_range(queries)),
    )


def neuron(layer: int, head: int, query: int, keys=None, kind: str = "", name: str = ""):
    """The neuron view of one query row: parts q, k, q_times_k, scores, probs."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        neuron=proto.NeuronView(layer=layer, head=head, query=query, keys=_range(keys)),
    )


def rollout(
    queries: Iterable[int],
    residual: float = 0.5,
    layers: Iterable[int] = (),
    heads: Iterable[int] = (),
    kind: str = "",
    name: str = "",
):
    """Attention rollout of the query positions `queries` through `layers` (empty = all), heads
    averaged over `heads` (empty = all): [len(queries), L]. Self-attention kinds only."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        rollout=proto.RolloutView(
            queries=list(queries), residual=residual, selection=_selection(layers, heads)
        ),
    )


def span_pooled(
    spans: Iterable[tuple[int, int]],
    layers: Iterable[int] = (),
    heads: Iterable[int] = (),
    key_spans: Iterable[tuple[int, int]] = (),
    kind: str = "",
    name: str = "",
):
    """Mass between (start, stop) token spans [layers, heads, len(spans), len(key_spans or spans)]."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        span_pooled=proto.SpanPooledView(
            spans=[_range(s) for s in spans],
            key_spans=[_range(s) for s in key_spans],
            selection=_selection(layers, heads),
        ),
    )


def head_classes(kind: str = "", name: str = ""):
    """Each head's class, int32 [layers, heads] of HeadClass numbers (`head_class_labels` names them)."""
    return proto.ViewRequest(name=name, kind=kind_number(kind), head_classes=proto.HeadClassesView())


def head_class_labels(classes) -> list[list[str]]:
    """The labels ("previous-token", ..., "mixed") of a head_classes tensor [layers, heads]."""
    return [[proto.LABEL_OF_HEAD_CLASS[int(c)] for c in row] for row in classes]


def sinks(threshold: float = 0.2, kind: str = "", name: str = ""):
    """Attention sinks at `threshold`: parts "positions" int64 [n] and "shares" float32 [Lk]."""
    return proto.ViewRequest(name=name, kind=kind_number(kind), sinks=proto.SinksView(threshold=threshold))


def renormalize(exclude_keys: Iterable[int] = (), sinks_threshold: float | None = None, kind: str = ""):
    """A request's Renormalize: every view computed without the keys `exclude_keys` (and, given
    `sinks_threshold`, without the trace's sinks at it), rows renormalised; pass it to
    `Client.extract(renormalize=...)` or `Client.views(renormalize=...)`."""
    spec = proto.Renormalize(exclude_keys=list(exclude_keys), kind=kind_number(kind))
    if sinks_threshold is not None:
        spec.sinks_threshold = sinks_threshold
    return spec


def attention_from(
    queries: Iterable[int],
    layers: Iterable[int] = (),
    heads: Iterable[int] = (),
    kind: str = "",
    name: str = "",
):
    """What the query positions `queries` read: [Lk], the mean of their attention rows over the
    selected layers and heads (empty = all)."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        attention_from=proto.AttentionFromView(queries=list(queries), selection=_selection(layers, heads)),
    )


def retrieval(queries: Iterable[int] = (), kind: str = "", name: str = ""):
    """Retrieval scores [layers, heads] at the query positions `queries` (empty = the positions that
    produced a generation trace's generated tokens)."""
    return proto.ViewRequest(
        name=name, kind=kind_number(kind), retrieval=proto.RetrievalView(queries=list(queries))
    )


def query_focus(
    question: tuple[int, int], context_spans: Iterable[tuple[int, int]], kind: str = "", name: str = ""
):
    """Mass from the question's tokens to each context span, [layers, heads, len(context_spans)]."""
    return proto.ViewRequest(
        name=name,
        kind=kind_number(kind),
        query_focus=proto.QueryFocusView(
            question=_range(question), context_spans=[_range(s) for s in context_spans]
        ),
    )


def generation(
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
):
    """A request's Generation: generate at most `max_new_tokens` after the text (greedy unless
    `do_sample`), then trace prompt + completion; pass it to `Client.extract(generation=...)`."""
    spec = proto.Generation(max_new_tokens=max_new_tokens, do_sample=do_sample)
    for field, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            setattr(spec, field, value)
    return spec


def default_views() -> list:
    """What Extract returns when no view is named."""
    return [head_stats(), pooled()]
