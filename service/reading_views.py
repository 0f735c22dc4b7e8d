"""Cost, run and work of the views of what chosen tokens read (extract/reading.py): attention from
query tokens, retrieval scores and query focus. `view_table.VIEW_TYPES` lists them beside the
others; each function takes (trace, spec, kind, limits) as theirs do."""

from __future__ import annotations

from ..extract import reading
from ..extract.selection import IndexOutOfRange
from .errors import InvalidArgument
from .view_args import count, invalid, selection, self_attention, span_ranges


def _positions(values, length: int, what: str) -> list[int]:
    bad = [q for q in values if not 0 <= q < length]
    if bad:
        raise IndexOutOfRange(f"{what} positions must be in [0, {length}), got {bad[:5]}")
    return list(values)


def _from_args(trace, spec, kind):
    lq = trace.shape(kind)[2]
    if not spec.queries:
        raise InvalidArgument("attention_from names no query: list at least one query position")
    queries = _positions(spec.queries, lq, "attention_from query")
    if len(set(queries)) != len(queries):
        raise InvalidArgument(f"attention_from lists a query more than once: {queries[:8]}; list each once")
    layers, heads = selection(spec.selection)
    return queries, layers, heads


def attention_from_cost(trace, spec, kind, limits) -> int:
    _from_args(trace, spec, kind)
    return trace.shape(kind)[3]


def attention_from_run(trace, spec, kind, limits):
    queries, layers, heads = _from_args(trace, spec, kind)
    yield "", trace.attention_from(queries, layers=layers, heads=heads, kind=kind)


def attention_from_work(trace, spec, kind) -> int:
    """One pass over every selected head's scores (the rows are weighted, not picked)."""
    layers, heads, lq, lk = trace.shape(kind)
    sel_l, sel_h = selection(spec.selection)
    return count(sel_l, layers) * count(sel_h, heads) * lq * lk


def _retrieval_queries(trace, spec, kind) -> list[int]:
    self_attention(trace, kind, "retrieval scores")
    lq = trace.shape(kind)[2]
    if spec.queries:
        return _positions(spec.queries, lq - 1, "retrieval query")
    return invalid(reading.generated_queries, trace, kind)


def retrieval_cost(trace, spec, kind, limits) -> int:
    _retrieval_queries(trace, spec, kind)
    layers, heads, _, _ = trace.shape(kind)
    return layers * heads


def retrieval_run(trace, spec, kind, limits):
    queries = _retrieval_queries(trace, spec, kind)
    yield "", trace.retrieval_scores(queries, kind=kind)


def retrieval_work(trace, spec, kind) -> int:
    """Every key of the span of chosen rows, in every head (the fused top-1)."""
    layers, heads, _, lk = trace.shape(kind)
    queries = list(spec.queries) or [trace.prompt_len or 0, trace.shape(kind)[2] - 1]
    return layers * heads * (max(queries) - min(queries) + 1) * lk


def _focus_args(trace, spec, kind):
    _, _, lq, lk = trace.shape(kind)
    if not spec.HasField("question"):
        raise InvalidArgument("query_focus names no question: set question to the question's token range")
    (question,) = span_ranges([spec.question], lq, "question")
    if not spec.context_spans:
        raise InvalidArgument("query_focus names no context span: list at least one")
    return question, span_ranges(spec.context_spans, lk, "context_spans")


def query_focus_cost(trace, spec, kind, limits) -> int:
    layers, heads, _, _ = trace.shape(kind)
    _, contexts = _focus_args(trace, spec, kind)
    return layers * heads * len(contexts)


def query_focus_run(trace, spec, kind, limits):
    question, contexts = _focus_args(trace, spec, kind)
    yield "", trace.query_focus(question, contexts, kind=kind)


def query_focus_work(trace, spec, kind) -> int:
    layers, heads, lq, lk = trace.shape(kind)
    return layers * heads * lq * lk
