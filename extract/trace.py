"""`Trace`: the captured Q/K of one sequence and every exact view computed from them.

A Trace keeps, for each kind of attention ("encoder", "decoder", "cross") and each layer, the
query [Hq, Lq, D] and key [Hkv, Lk, D] tensors on the model's device plus their `MaskSpec`.
Row statistics (log-sum-exp, entropy) are computed on a layer's first use, in the one pass that
also gives its standard views (pooled map at the default size, received attention, head-statistic
terms), and kept; every view is computed from them by `kernels.backend` (Triton on CUDA, chunked
torch elsewhere), and only the requested result comes back to the host, as float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..kernels import HEAD_STAT_NAMES, MaskSpec, NeuronView, backend
from ..kernels.facts import DEFAULT_POOLED_SIZE
from ..kernels.headstats import reduce_head_stats
from . import analysis, reading
from .generation import Generated
from .selection import IndexOutOfRange, Span, choose, index, span

KINDS = ("encoder", "decoder", "cross")


@dataclass
class LayerQK:
    """Q and K of one attention layer of one sequence."""

    q: torch.Tensor  # [Hq, Lq, D]
    k: torch.Tensor  # [Hkv, Lk, D]
    spec: MaskSpec


class TokensByKind:
    """What Trace and DenseTrace share: the kinds of attention held, their tokens, the sizes
    derived from `shape(kind)`, and the head analysis of extract/analysis.py. Subclasses set
    `_by_kind` (kind -> per-kind data), `_tokens` (kind -> (query tokens, key tokens)),
    `_given_ids` (kind -> (query ids, key ids), or None) and `default_kind`, and define `shape` and
    analysis' primitives (`_weighted_received`, `_span_sums`, `_visibility`, `_has_sink`,
    `_device`, `_dtype`)."""

    _by_kind: dict
    _tokens: dict[str, tuple[list[str], list[str]]]
    _given_ids: dict | None = None
    _ids: dict | None = None  # kind -> (query ids, key ids) as device tensors, made on first use
    default_kind: str
    sentence_b_start: int | None = None
    #: kind -> token positions where a sentence of the text begins (from the tokenizer's offsets,
    #: set by the Extractor for the kinds whose queries are the input text), or None.
    sentence_starts: dict[str, list[int]] | None = None
    #: Generation traces (`Extractor.trace(..., generate=N)`): positions [0, prompt_len) are the
    #: prompt, the rest was generated; None for a trace of a given text.
    prompt_len: int | None = None
    #: Generation traces: the generated token ids and their text; None otherwise.
    generated: Generated | None = None

    def shape(self, kind: str | None = None) -> tuple[int, int, int, int]:
        raise NotImplementedError

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of attention held, e.g. ("encoder",) or ("encoder", "decoder", "cross")."""
        return tuple(k for k in KINDS if k in self._by_kind)

    def _kind(self, kind: str | None) -> str:
        kind = self.default_kind if kind is None else kind
        if kind not in self._by_kind:
            raise ValueError(f"kind must be one of {self.kinds}, got {kind!r}")
        return kind

    @property
    def tokens(self) -> list[str]:
        """Query tokens of the default kind (the input text's tokens for single-stack models)."""
        return self.query_tokens()

    def query_tokens(self, kind: str | None = None) -> list[str]:
        return list(self._tokens[self._kind(kind)][0])

    def key_tokens(self, kind: str | None = None) -> list[str]:
        return list(self._tokens[self._kind(kind)][1])

    def token_ids(self, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(query ids [Lq], key ids [Lk]) int64 on the kind's device: the ids the trace was built
        with, else ids standing for the token strings (equal strings, equal ids)."""
        kind = self._kind(kind)
        if self._ids is None:
            self._ids = analysis.token_id_tensors(self._given_ids, self._tokens, self._device)
        return self._ids[kind]

    # ---- head analysis (extract/analysis.py) -------------------------------------------------
    def head_classes(self, kind: str | None = None) -> dict[tuple[int, int], str]:
        """(layer, head) -> previous-token | induction | duplicate-token | first-token | self |
        local | diffuse | mixed, from `head_stats`: the pattern whose statistic is highest among
        those at or over their threshold (previous_token >= 0.5, induction >= 0.4,
        duplicate_token >= 0.4, first_token >= 0.5, self >= 0.5); else diffuse (entropy >= 0.8 of
        uniform attention's over the same rows); else local (mean_distance <= 3 tokens); else
        mixed (`analysis.head_classes`)."""
        return analysis.head_classes(self, kind)

    def sinks(self, threshold: float = 0.2, kind: str | None = None) -> list[int]:
        """Key positions whose mean share of a visible query's attention (over all layers and
        heads) is at least `threshold`, in (0, 1]."""
        return analysis.sinks(self, threshold, kind)

    def rollout(self, queries, residual: float = 0.5, heads=None, kind: str | None = None, layers=None):
        """Attention rollout (Abnar & Zuidema, 2020): float32 [len(queries), L]; see `analysis.rollout`."""
        return analysis.rollout(self, queries, residual, heads, kind, layers)

    def span_pooled(self, spans, layers=None, heads=None, kind: str | None = None, key_spans=None):
        """[layers, heads, n, m]: mean over span i's query rows of the mass on span j; see
        `analysis.span_pooled`."""
        return analysis.span_pooled(self, spans, layers, heads, kind, key_spans)

    def sentence_spans(self, kind: str | None = None) -> list[tuple[int, int]]:
        """(start, stop) query ranges of the text's sentences; see `analysis.sentence_spans`."""
        kind = self._kind(kind)
        b_start = self.sentence_b_start if kind != "cross" else None
        starts = (self.sentence_starts or {}).get(kind)
        return analysis.sentence_spans(self.query_tokens(kind), b_start, starts)

    def attention_from(self, queries, layers=None, heads=None, kind: str | None = None) -> torch.Tensor:
        """float32 [Lk]: mean over the chosen layers, heads and query positions of the rows P[q, :];
        see `reading.attention_from`."""
        return reading.attention_from(self, queries, layers, heads, kind)

    def retrieval_scores(self, queries=None, kind: str | None = None) -> torch.Tensor:
        """float32 [layers, heads]: how often each head's top key holds the token produced at the
        query (default: the positions that produced the generated tokens); see
        `reading.retrieval_scores`."""
        return reading.retrieval_scores(self, queries, kind)

    def query_focus(self, question_span, context_spans, kind: str | None = None) -> torch.Tensor:
        """float32 [layers, heads, len(context_spans)]: mean mass from the question's tokens to each
        context span; see `reading.query_focus`."""
        return reading.query_focus(self, question_span, context_spans, kind)

    def passages(
        self, queries=None, spans=None, layers=None, heads=None, top: int = 5, kind: str | None = None
    ):
        """[(start, stop, mass)]: the `top` passages (default: the prompt's sentences) the query
        tokens (default: the generated ones) read most; see `reading.passages`."""
        return reading.passages(self, queries, spans, layers, heads, top, kind)

    def _carry_text_facts(self, out: TokensByKind) -> TokensByKind:
        """`out` (a trace made from this one's Q/K or P) with this trace's sentence starts and
        generation split."""
        out.sentence_starts = self.sentence_starts
        out.prompt_len = self.prompt_len
        out.generated = self.generated
        return out

    @property
    def num_layers(self) -> int:
        return self.shape()[0]

    @property
    def num_heads(self) -> int:
        return self.shape()[1]

    @property
    def seq_len(self) -> int:
        return self.shape()[2]


class Trace(TokensByKind):
    """Captured attention of one sequence. Views return float32 CPU tensors."""

    #: How the attention was obtained: Q and K captured during the model's own fast attention.
    method = "capture"

    def __init__(
        self,
        layers: dict[str, list[LayerQK]],
        tokens: dict[str, tuple[list[str], list[str]]],
        sentence_b_start: int | None = None,
        token_ids: dict | None = None,
    ) -> None:
        """`token_ids`: kind -> (query ids [Lq], key ids [Lk]), the model's input ids, for the
        duplicate-token and induction statistics; without them, ids stand for the token strings."""
        if not layers:
            raise ValueError("a Trace needs at least one captured attention layer")
        self._layers = self._by_kind = layers
        self._tokens = tokens
        self._given_ids = token_ids
        self.sentence_b_start = sentence_b_start
        self.default_kind = next(k for k in KINDS if k in layers)
        self._row_stats: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._head_stats: dict[str, dict[str, torch.Tensor]] = {}
        # (kind, layer) -> a layer's standard views over every head, from the one pass that also
        # gives its row statistics (`_layer_views`): "pooled" at the default size and "received"
        # (float32, CPU), head-statistic "terms" and "token_terms" (on the device).
        self._views: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._visible: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def shape(self, kind: str | None = None) -> tuple[int, int, int, int]:
        """(layers, query heads, query length, key length) of one kind of attention."""
        layers = self._layers[self._kind(kind)]
        return len(layers), layers[0].q.shape[0], layers[0].q.shape[1], layers[0].k.shape[1]

    def head_dim(self, kind: str | None = None) -> int:
        """Elements per query/key vector."""
        return self._layers[self._kind(kind)][0].q.shape[-1]

    def num_key_heads(self, kind: str | None = None) -> int:
        """Key heads per layer (fewer than query heads with grouped-query attention)."""
        return self._layers[self._kind(kind)][0].k.shape[0]

    def nbytes(self) -> int:
        """Device bytes the trace holds: its Q and K (row statistics add a few percent)."""
        return sum(
            lqk.q.numel() * lqk.q.element_size() + lqk.k.numel() * lqk.k.element_size()
            for layers in self._layers.values()
            for lqk in layers
        )

    def bytes_by_device(self) -> dict[str, int]:
        """Device name -> bytes of Q and K held there: with a device map each layer's stay on the
        device the layer ran on (and its views are computed there)."""
        out: dict[str, int] = {}
        for layers in self._layers.values():
            for lqk in layers:
                for t in (lqk.q, lqk.k):
                    out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
        return out

    def layer_qk(self, layer: int, kind: str | None = None) -> LayerQK:
        """The captured Q/K and mask of one layer (on the model's device)."""
        layers = self._layers[self._kind(kind)]
        return layers[index(layer, len(layers), "layer")]

    # ---- row statistics ----------------------------------------------------------------------
    def row_stats(self, layer: int, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-sum-exp [Hq, Lq], entropy [Hq, Lq]) on the device; computed once per layer, in the
        pass that also gives the layer's standard views (`_layer_views`)."""
        kind = self._kind(kind)
        key = (kind, index(layer, len(self._layers[kind]), "layer"))
        if key not in self._row_stats:
            self._layer_views(key[1], kind)
        return self._row_stats[key]

    def _layer_views(self, layer: int, kind: str) -> dict[str, torch.Tensor]:
        """The standard views of one layer over every head, computed once: pooled at the default
        size, received attention and the head statistics' row terms, with the row statistics
        when they are not known yet, all from one pass over the layer's logits (`backend.digest`
        with lse=None), so `pooled(); head_stats(); received()` costs one pass per layer."""
        key = (kind, layer)
        if key not in self._views:
            lqk = self.layer_qk(layer, kind)
            known = self._row_stats.get(key)
            lq, lk = lqk.q.shape[1], lqk.k.shape[1]
            got = backend.digest(
                lqk.q,
                lqk.k,
                lqk.spec,
                None if known is None else known[0],
                pooled_size=(min(DEFAULT_POOLED_SIZE, lq), min(DEFAULT_POOLED_SIZE, lk)),
                received=True,
                terms=True,
                token_ids=self.token_ids(kind),
            )
            if known is None:
                self._row_stats[key] = (got["lse"], got["entropy"])
            self._views[key] = {
                "pooled": got["pooled"].cpu(),
                "received": got["received"].cpu(),
                "terms": got["terms"],
                "token_terms": got["token_terms"],
            }
        return self._views[key]

    # ---- views -------------------------------------------------------------------------------
    def attention(
        self, layer: int, head: int, queries: Span = None, keys: Span = None, kind: str | None = None
    ) -> torch.Tensor:
        """Exact probabilities [len(queries), len(keys)] of one head (float32, CPU)."""
        lqk = self.layer_qk(layer, kind)
        head = index(head, lqk.q.shape[0], "head")
        q_rows = span(queries, lqk.q.shape[1], "queries")
        k_cols = span(keys, lqk.k.shape[1], "keys")
        lse, _ = self.row_stats(layer, kind)
        return backend.probs_tile(lqk.q, lqk.k, lqk.spec, lse, head, q_rows, k_cols).cpu()

    def pooled(
        self,
        size: int = DEFAULT_POOLED_SIZE,
        layers: int | Iterable[int] | None = None,
        heads: int | Iterable[int] | None = None,
        kind: str | None = None,
    ) -> torch.Tensor:
        """Probability mass per block [layers, heads, min(size, Lq), min(size, Lk)] (see kernels.pooled)."""
        kind = self._kind(kind)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        chosen_layers = choose(layers, len(self._layers[kind]), "layer")
        chosen_heads = choose(heads, self.shape(kind)[1], "head")
        every_head = set(chosen_heads) == set(range(self.shape(kind)[1]))
        maps = []
        for layer in chosen_layers:
            lqk = self.layer_qk(layer, kind)
            sq, sk = min(size, lqk.q.shape[1]), min(size, lqk.k.shape[1])
            if (sq, sk) == (
                min(DEFAULT_POOLED_SIZE, lqk.q.shape[1]),
                min(DEFAULT_POOLED_SIZE, lqk.k.shape[1]),
            ):
                maps.append(self._layer_views(layer, kind)["pooled"][chosen_heads])
                continue
            lse, _ = self.row_stats(layer, kind)
            got = backend.digest(
                lqk.q, lqk.k, lqk.spec, lse, pooled_size=(sq, sk), heads=None if every_head else chosen_heads
            )
            maps.append((got["pooled"][chosen_heads] if every_head else got["pooled"]).cpu())
        return torch.stack(maps)

    def received(
        self,
        layers: int | Iterable[int] | None = None,
        heads: int | Iterable[int] | None = None,
        kind: str | None = None,
    ) -> torch.Tensor:
        """Attention each key receives (column sums of P) [layers, heads, Lk]."""
        kind = self._kind(kind)
        chosen_layers = choose(layers, len(self._layers[kind]), "layer")
        chosen_heads = choose(heads, self.shape(kind)[1], "head")
        return torch.stack(
            [self._layer_views(layer, kind)["received"][chosen_heads] for layer in chosen_layers]
        )

    def topk(
        self, k: int, layer: int, head: int, queries: Span = None, kind: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int64 [q, k], probs float32 [q, k]) of each query's k most attended keys.

        Rows with fewer than k visible keys are padded with index -1 and probability 0.
        """
        lqk = self.layer_qk(layer, kind)
        head = index(head, lqk.q.shape[0], "head")
        lk = lqk.k.shape[1]
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an int in [1, {lk}], got {k!r}")
        if not 1 <= k <= lk:
            raise IndexOutOfRange(f"k must be an int in [1, {lk}], got {k!r}")
        q_rows = span(queries, lqk.q.shape[1], "queries")
        lse, _ = self.row_stats(layer, kind)
        idx, probs = backend.top_k(lqk.q, lqk.k, lqk.spec, lse, head, k, q_rows)
        return idx.cpu(), probs.cpu()

    def neuron(
        self, layer: int, head: int, query: int, keys: Span = None, kind: str | None = None
    ) -> NeuronView:
        """q [D], k [n, D], q_times_k [n, D], scores [n] (scaled, masked = -inf), probs [n]."""
        lqk = self.layer_qk(layer, kind)
        head = index(head, lqk.q.shape[0], "head")
        query = index(query, lqk.q.shape[1], "query")
        k_cols = span(keys, lqk.k.shape[1], "keys")
        lse, _ = self.row_stats(layer, kind)
        view = backend.neuron_view(lqk.q, lqk.k, lqk.spec, lse, head, query, k_cols)
        return NeuronView(*(t.cpu() for t in view))

    def head_stats(self, kind: str | None = None) -> dict[str, torch.Tensor]:
        """dict name -> [layers, heads] for every statistic in HEAD_STAT_NAMES: entropy,
        previous_token, self, first_token, mean_distance, duplicate_token, induction."""
        kind = self._kind(kind)
        if kind not in self._head_stats:
            per_layer = []
            for layer in range(len(self._layers[kind])):
                views = self._layer_views(layer, kind)
                lse, ent = self.row_stats(layer, kind)
                per_layer.append(reduce_head_stats(lse, ent, views["terms"], views["token_terms"]))
            self._head_stats[kind] = {
                name: torch.stack([s[name] for s in per_layer]).cpu() for name in HEAD_STAT_NAMES
            }
        return {name: t.clone() for name, t in self._head_stats[kind].items()}

    def renormalized(self, exclude_keys, kind: str | None = None) -> Trace:
        """A trace of the same Q/K whose every view leaves the keys `exclude_keys` out and
        renormalises each row: P'[q, k] = P[q, k] / (1 - Σ_{e∈E} P[q, e]) off E, 0 on E, a row
        with nothing left all zeros. `exclude_keys`: positions of `kind`'s keys (default kind),
        or a dict kind -> positions; other kinds are kept as they are.

        Done through the row statistics (`analysis.renormalize_layer`): E joins the mask's key
        padding and each row's log-sum-exp moves by log(1 - Σ_E P). A sink logit (gpt-oss)
        stays in every row's denominator: the row is the model's softmax over the keys left and
        the sink, so it sums to 1 minus the sink's (renormalised) share, as before.
        """
        keys = analysis.by_kind(self, exclude_keys, kind)
        layers, stats = {}, {}
        for k, held in self._layers.items():
            if k not in keys or not keys[k]:
                layers[k] = held
                stats.update({key: v for key, v in self._row_stats.items() if key[0] == k})
                continue
            layers[k] = []
            for i, lqk in enumerate(held):
                spec, lse, ent = analysis.renormalize_layer(lqk, *self.row_stats(i, k), keys[k])
                layers[k].append(LayerQK(lqk.q, lqk.k, spec))
                stats[(k, i)] = (lse, ent)
        out = Trace(layers, self._tokens, self.sentence_b_start, self._given_ids)
        out._row_stats = stats
        return self._carry_text_facts(out)

    # ---- analysis' primitives (one layer of one kind, on the device) -------------------------
    def _device(self, kind: str) -> torch.device:
        return self._layers[kind][0].q.device

    def _dtype(self, kind: str) -> torch.dtype:
        return self._layers[kind][0].q.dtype

    def _has_sink(self, layer: int, kind: str) -> bool:
        return self.layer_qk(layer, kind).spec.sinks is not None

    def _visibility(self, layer: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        if (kind, layer) not in self._visible:
            lqk = self.layer_qk(layer, kind)
            self._visible[(kind, layer)] = analysis.visible_counts(
                lqk.spec, lqk.q.shape[1], lqk.k.shape[1], lqk.q.device
            )
        return self._visible[(kind, layer)]

    def _weighted_received(self, layer: int, heads: list[int], weights: torch.Tensor, kind: str):
        lqk = self.layer_qk(layer, kind)
        lse, _ = self.row_stats(layer, kind)
        got = backend.digest(lqk.q, lqk.k, lqk.spec, lse, heads=heads, row_weights=weights)
        return got["weighted_received"]

    def _span_sums(self, layer: int, heads: list[int], blocks, kind: str):
        lqk = self.layer_qk(layer, kind)
        lse, _ = self.row_stats(layer, kind)
        return backend.digest(lqk.q, lqk.k, lqk.spec, lse, heads=heads, blocks=blocks)["span_sums"]

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{k}: {len(v)} layers × {v[0].q.shape[0]} heads, {v[0].q.shape[1]}×{v[0].k.shape[1]}"
            for k, v in self._layers.items()
        )
        return f"Trace({shapes})"
