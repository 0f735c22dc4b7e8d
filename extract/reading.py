"""What chosen tokens read: attention from query tokens, retrieval scores and query focus.

The questions of generation traces ("which part of my prompt did the answer use?"), written once
for both trace types over their public views and analysis' primitives; nothing here builds an
L×L matrix:

* `attention_from` averages the rows of chosen queries through ``_weighted_received`` (one pass
  over each chosen head's tiles, rows weighted one-hot);
* `retrieval_scores` reads the exact top-1 key of each chosen row from the fused top-k;
* `query_focus` is one row of a span map (``_span_sums``) from the question to the context spans.
"""

from __future__ import annotations

import torch

from .analysis import _queries, check_spans, self_attention, span_pooled
from .selection import choose


def attention_from(trace, queries, layers=None, heads=None, kind: str | None = None) -> torch.Tensor:
    """float32 [Lk]: the mean over the chosen layers, heads and `queries` (query positions, each
    once) of the attention rows P[q, :]: what those tokens read."""
    kind = trace._kind(kind)
    n_layers, n_heads, lq, _ = trace.shape(kind)
    rows = _queries(queries, lq)
    if len(set(rows)) != len(rows):
        raise ValueError(f"queries must be distinct, got {rows}")
    chosen_layers = choose(layers, n_layers, "layer")
    chosen_heads = choose(heads, n_heads, "head")
    dtype = torch.float64 if trace._dtype(kind) == torch.float64 else torch.float32
    weights = torch.zeros(len(chosen_heads), lq, dtype=dtype, device=trace._device(kind))
    weights[:, rows] = 1.0 / (len(rows) * len(chosen_heads) * len(chosen_layers))
    total = None
    for layer in chosen_layers:
        got = trace._weighted_received(layer, chosen_heads, weights, kind).double().sum(0).cpu()
        total = got if total is None else total + got
    return total.float()


def generated_queries(trace, kind: str | None = None) -> list[int]:
    """The query positions that produced a generation trace's generated tokens: prompt_len - 1
    ... L - 2 (position q's output is the token at q + 1)."""
    if trace.prompt_len is None:
        raise ValueError(
            "this is not a generation trace (no prompt_len): pass the query positions to score, or "
            "trace with generate=N"
        )
    length = trace.shape(kind)[2]
    return list(range(trace.prompt_len - 1, length - 1))


def retrieval_scores(trace, queries=None, kind: str | None = None) -> torch.Tensor:
    """float32 [layers, heads]: retrieval heads (Wu et al. 2024). For each chosen query position q
    (None = the positions that produced the generated tokens), 1 when the head's strongest visible
    key (exact top-1 of the fused top-k) holds the token produced at q, the id at position q + 1,
    else 0; averaged over the positions. Self-attention only."""
    kind, (n_layers, n_heads, lq, _) = self_attention(trace, kind, "retrieval scores")
    rows = generated_queries(trace, kind) if queries is None else _queries(queries, lq)
    if not rows:
        raise ValueError("no query position to score: the generation produced no token after the prompt")
    late = [q for q in rows if q >= lq - 1]
    if late:
        raise ValueError(
            f"query position {late[0]} produced no token in this trace (the last position is "
            f"{lq - 1}): score positions in [0, {lq - 1})"
        )
    ids, key_ids = trace.token_ids(kind)
    rows_t = torch.tensor(rows, dtype=torch.int64)
    produced = ids.cpu()[rows_t + 1]
    key_ids = key_ids.cpu()
    first, last = min(rows), max(rows) + 1
    scores = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for head in range(n_heads):
            idx, _ = trace.topk(1, layer, head, slice(first, last), kind=kind)
            top = idx[rows_t - first, 0]
            hit = (top >= 0) & (key_ids[top.clamp(min=0)] == produced)
            scores[layer, head] = hit.double().mean()
    return scores.float()


def query_focus(trace, question_span, context_spans, kind: str | None = None) -> torch.Tensor:
    """float32 [layers, heads, len(context_spans)]: the attention mass from the question's tokens
    (`question_span`, a (start, stop) query range) to each context span (key ranges), mean over the
    question's tokens (query-focused retrieval heads, Zhang et al. 2025)."""
    kind = trace._kind(kind)
    _, _, lq, lk = trace.shape(kind)
    (question,) = check_spans([question_span], lq, "question_span")
    contexts = check_spans(context_spans, lk, "context_spans")
    return span_pooled(trace, [question], kind=kind, key_spans=contexts)[:, :, 0, :].contiguous()


def passages(
    trace, queries=None, spans=None, layers=None, heads=None, top: int = 5, kind: str | None = None
) -> list[tuple[int, int, float]]:
    """The passages the query tokens read most: (start, stop, mass) for the `top` key spans with
    the most `attention_from(queries, layers, heads)` mass, largest first. `queries` None = the
    generated tokens of a generation trace; `spans` None = the text's sentences before the first
    query (for a generation trace, the prompt's)."""
    kind = trace._kind(kind)
    lq = trace.shape(kind)[2]
    if queries is None:
        if trace.prompt_len is None:
            raise ValueError("this is not a generation trace: pass the query positions whose reading to rank")
        queries = list(range(trace.prompt_len, lq))
        if not queries:
            raise ValueError("the generation produced no token: nothing read anything")
    rows = _queries(queries, lq)
    if spans is None:
        spans = [(a, min(b, min(rows))) for a, b in trace.sentence_spans(kind) if a < min(rows)]
    mass = attention_from(trace, rows, layers, heads, kind).double()
    ranked = sorted(
        ((a, b, float(mass[a:b].sum())) for a, b in check_spans(spans, len(mass), "spans")),
        key=lambda s: (-s[2], s[0]),
    )
    return ranked[:top]
