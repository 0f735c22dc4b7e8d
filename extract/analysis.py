"""Head analysis over a trace: head classes, attention sinks, renormalised traces, attention
rollout, span maps and sentence spans.

Everything here is written once for both trace types (`Trace`, captured Q/K; `DenseTrace`, given
probabilities). Each supplies three primitives over one layer of one kind, and this module never
touches Q, K or P itself:

* ``_weighted_received(layer, heads, weights, kind)`` -> [len(heads), Lk]: ``Σ_q w[h, q]·P[h, q, k]``
  (the Trace through `backend.digest(row_weights=...)`, a pass over tiles; never an L×L matrix),
* ``_span_sums(layer, heads, blocks, kind)`` -> [len(heads), nq, nk]: ``Σ P`` over each pair of
  query and key blocks (`backend.digest(blocks=...)`),
* ``_visibility(layer, kind)`` -> (visible keys per query row [Lq], visible queries per key [Lk]),
  int64, from the layer's mask (the dense trace: from ``P > 0``).

Renormalising works on the stored row statistics alone (`renormalize_layer`): a trace without keys
``E`` is the same Q/K with ``E`` added to the mask's key padding, and each row's log-sum-exp moved by
``log(1 - Σ_{e∈E} P[q, e])``, from the ``|E|`` logits of the row.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch

from .inputs import SENTENCE_CLOSERS, SENTENCE_ENDERS
from .selection import IndexOutOfRange, choose, index

# ---- token ids ----------------------------------------------------------------------------------


def ids_of_tokens(tokens: Sequence[str]) -> list[int]:
    """Integer ids standing for token strings: equal strings share an id, distinct strings differ.

    A tokenizer's `convert_ids_to_tokens` is one-to-one over its vocabulary, so this gives the same
    equalities as the real ids (what the duplicate-token and induction statistics compare) when a
    trace was built without them."""
    seen: dict[str, int] = {}
    return [seen.setdefault(t, len(seen)) for t in tokens]


def token_id_tensors(
    token_ids: dict | None, tokens: dict[str, tuple[list[str], list[str]]], device_of
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """kind -> (query ids [Lq], key ids [Lk]) int64 on the kind's device: the given ids, else ids
    derived from the token strings (`ids_of_tokens`, over both axes at once so that cross
    attention's query and key ids are comparable)."""
    out = {}
    for kind, (q_tokens, k_tokens) in tokens.items():
        if token_ids is not None and kind in token_ids:
            q_ids, k_ids = (torch.as_tensor(x, dtype=torch.int64) for x in token_ids[kind])
        else:
            both = ids_of_tokens([*q_tokens, *k_tokens])
            q_ids = torch.tensor(both[: len(q_tokens)], dtype=torch.int64)
            k_ids = torch.tensor(both[len(q_tokens) :], dtype=torch.int64)
        if q_ids.shape != (len(q_tokens),) or k_ids.shape != (len(k_tokens),):
            raise ValueError(
                f"{kind} token ids must be [{len(q_tokens)}] and [{len(k_tokens)}] (one per token), "
                f"got {tuple(q_ids.shape)} and {tuple(k_ids.shape)}"
            )
        device = device_of(kind)
        out[kind] = (q_ids.to(device), k_ids.to(device))
    return out


# ---- visibility ---------------------------------------------------------------------------------


def visible_counts(spec, lq: int, lk: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible keys per query row [Lq], visible queries per key [Lk]) int64 under `spec`: closed
    forms for causal / window / key-padding masks (a key range per row, a query range per key),
    else the mask evaluated over query chunks (booleans only)."""
    q_idx = torch.arange(lq, device=device)
    k_idx = torch.arange(lk, device=device)
    if all(getattr(spec, name) is None for name in ("chunk", "segments", "groups")):
        w = spec.window
        big = max(lq, lk) + 1
        if spec.causal:  # 0 <= q - k < w
            k_lo, k_hi = q_idx - (w - 1 if w is not None else big), q_idx + 1
            q_lo, q_hi = k_idx, k_idx + (w if w is not None else big)
        else:  # |q - k| < w
            reach = w if w is not None else big
            k_lo, k_hi = q_idx - reach + 1, q_idx + reach
            q_lo, q_hi = k_idx - reach + 1, k_idx + reach
        real = torch.ones(lk, dtype=torch.int64, device=device)
        if spec.key_padding is not None:
            real = spec.key_padding[0].to(device=device, dtype=torch.int64)
        before = torch.cat([real.new_zeros(1), real.cumsum(0)])  # real keys before each position
        k_lo, k_hi = k_lo.clamp(0, lk), k_hi.clamp(0, lk)
        rows = (before[k_hi] - before[k_lo]).clamp(min=0)
        cols = real * (q_hi.clamp(0, lq) - q_lo.clamp(0, lq)).clamp(min=0)
        return rows, cols
    rows = torch.zeros(lq, dtype=torch.int64, device=device)
    cols = torch.zeros(lk, dtype=torch.int64, device=device)
    step = max(1, (1 << 24) // max(lk, 1))
    for q0 in range(0, lq, step):
        q1 = min(lq, q0 + step)
        k0, k1 = spec.key_range(q0, q1, lk)
        if k1 <= k0:
            continue
        block = spec.allowed(q_idx[q0:q1], k_idx[k0:k1])
        if block is None:
            rows[q0:q1] += k1 - k0
            cols[k0:k1] += q1 - q0
        else:
            rows[q0:q1] += block.sum(1)
            cols[k0:k1] += block.sum(0)
    return rows, cols


# ---- head classes -------------------------------------------------------------------------------

#: The labels `head_classes` gives, in this order (the wire's HeadClass enum follows it).
HEAD_CLASSES = (
    "previous-token",
    "induction",
    "duplicate-token",
    "first-token",
    "self",
    "local",
    "diffuse",
    "mixed",
)
#: label -> (head statistic, the value at or over which a head has that pattern).
PATTERN_THRESHOLDS = {
    "previous-token": ("previous_token", 0.5),
    "induction": ("induction", 0.4),
    "duplicate-token": ("duplicate_token", 0.4),
    "first-token": ("first_token", 0.5),
    "self": ("self", 0.5),
}
#: A head is diffuse when its mean entropy is at least this share of the largest its rows allow.
DIFFUSE_ENTROPY_SHARE = 0.8
#: A head is local when its mean |q - k| under its attention is at most this many tokens.
LOCAL_DISTANCE = 3.0


def max_entropy(rows: torch.Tensor, has_sink: bool) -> float:
    """Mean over non-empty rows of log(visible keys (+1 for a sink logit)): uniform attention's entropy."""
    outcomes = rows.double() + (1 if has_sink else 0)
    outcomes = outcomes[outcomes > 0]
    return float(outcomes.log().mean()) if outcomes.numel() else 0.0


def classify_heads(
    stats: dict[str, torch.Tensor], max_entropies: Sequence[float]
) -> dict[tuple[int, int], str]:
    """(layer, head) -> label; see `head_classes` for the rules."""
    layers, heads = stats["entropy"].shape
    out = {}
    for layer in range(layers):
        for head in range(heads):
            scores = {
                label: float(stats[name][layer, head])
                for label, (name, threshold) in PATTERN_THRESHOLDS.items()
                if float(stats[name][layer, head]) >= threshold
            }
            if scores:
                out[(layer, head)] = max(scores, key=scores.get)  # first of equal scores wins
            elif max_entropies[layer] > 0 and float(stats["entropy"][layer, head]) >= (
                DIFFUSE_ENTROPY_SHARE * max_entropies[layer]
            ):
                out[(layer, head)] = "diffuse"
            elif float(stats["mean_distance"][layer, head]) <= LOCAL_DISTANCE:
                out[(layer, head)] = "local"
            else:
                out[(layer, head)] = "mixed"
    return out


def head_classes(trace, kind: str | None = None) -> dict[tuple[int, int], str]:
    """(layer, head) -> one of HEAD_CLASSES, from the head statistics (kernels/headstats.py):

    1. a pattern, if any statistic reaches its threshold (`PATTERN_THRESHOLDS`): previous-token
       (``previous_token >= 0.5``), induction (``induction >= 0.4``), duplicate-token
       (``duplicate_token >= 0.4``), first-token, the sink (``first_token >= 0.5``), self
       (``self >= 0.5``); of several, the one with the highest value;
    2. else diffuse: mean entropy at least 0.8 of uniform attention's over the same rows (the mean of
       log(visible keys), the sink logit counted as one more outcome);
    3. else local: ``mean_distance <= 3`` tokens;
    4. else mixed.
    """
    kind = trace._kind(kind)
    stats = trace.head_stats(kind=kind)
    layers = trace.shape(kind)[0]
    entropies = [
        max_entropy(trace._visibility(layer, kind)[0], trace._has_sink(layer, kind))
        for layer in range(layers)
    ]
    return classify_heads(stats, entropies)


# ---- sinks --------------------------------------------------------------------------------------


def key_shares(trace, kind: str | None = None) -> torch.Tensor:
    """float64 [Lk]: each key's mean share of a visible query's attention, over every layer and
    head (keys no query sees: 0)."""
    kind = trace._kind(kind)
    layers, heads, _, lk = trace.shape(kind)
    mass = torch.zeros(lk, dtype=torch.float64)
    seen = torch.zeros(lk, dtype=torch.float64)
    for layer in range(layers):
        mass += trace.received(layers=[layer], kind=kind)[0].double().sum(0)
        seen += heads * trace._visibility(layer, kind)[1].double().cpu()
    return torch.where(seen > 0, mass / seen.clamp(min=1), torch.zeros_like(mass))


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return float(threshold)


def sinks(trace, threshold: float = 0.2, kind: str | None = None) -> list[int]:
    """Key positions whose mean share of a visible query's attention, over all layers and heads,
    is at least `threshold` (in (0, 1]), ascending."""
    threshold = check_threshold(threshold)
    shares = key_shares(trace, kind)
    return [int(k) for k in torch.nonzero(shares >= threshold).flatten()]


# ---- renormalised traces ------------------------------------------------------------------------


def excluded_keys(exclude_keys, lk: int, kind: str) -> list[int]:
    """Sorted distinct key positions in [0, lk) (negative ones count from the end)."""
    if isinstance(exclude_keys, int | bool) or exclude_keys is None:
        raise ValueError(f"exclude_keys must be a list of key positions, got {exclude_keys!r}")
    keys = set()
    for k in exclude_keys:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"exclude_keys must hold ints, got {k!r}")
        if not -lk <= k < lk:
            raise IndexOutOfRange(f"{kind} key position must be in [{-lk}, {lk}), got {k}")
        keys.add(k % lk)
    return sorted(keys)


def by_kind(trace, exclude_keys, kind: str | None) -> dict[str, list[int]]:
    """kind -> keys to leave out: a dict per kind as given, or a list for `kind` (default kind)."""
    given = exclude_keys if isinstance(exclude_keys, dict) else {trace._kind(kind): exclude_keys}
    return {trace._kind(k): excluded_keys(v, trace.shape(k)[3], trace._kind(k)) for k, v in given.items()}


def _excluded_logits(lqk, heads: torch.Tensor, keys: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
    """Masked logits [Hq, q1 - q0, |E|] of the keys `keys` (compute dtype)."""
    from ..kernels.scores import compute_dtype

    q, k, spec = lqk.q, lqk.k, lqk.spec
    dt = compute_dtype(q)
    group = q.shape[0] // k.shape[0]
    kv = k[:, keys].to(dt)[heads // group]  # [Hq, |E|, D]
    q_idx = torch.arange(q0, q1, device=q.device)
    s = spec.logits(torch.matmul(q[:, q0:q1].to(dt), kv.transpose(-1, -2)), heads, q_idx, keys)
    visible = spec.allowed(q_idx, keys)
    return s if visible is None else s.masked_fill(~visible, float("-inf"))


def renormalize_layer(lqk, lse: torch.Tensor, entropy: torch.Tensor, keys: list[int]):
    """(spec, lse', entropy') of one layer with the keys `keys` left out and each row renormalised.

    With m = Σ_{e∈E} P[q, e] (from the |E| logits of the row) and Z = 1 - m: lse' = lse + log Z, so
    exp(s - lse') = P / Z; entropy' = (H - H_E) / Z + log Z with H_E = -Σ_E P log P (the sink's
    outcome, if any, stays in H and in Z). A row with no visible key left and no sink is empty
    (lse' = -inf, entropy' = 0). Z is computed as 1 - m: where E held nearly all of a row, P' has a
    relative error of about (rounding of lse)·m/Z.
    """
    spec = lqk.spec
    lq, lk = lqk.q.shape[1], lqk.k.shape[1]
    device = lqk.q.device
    keys_t = torch.tensor(keys, dtype=torch.int64, device=device)
    heads = torch.arange(lqk.q.shape[0], device=device)
    dt = torch.float64 if lse.dtype == torch.float64 else torch.float32
    mass = torch.zeros(lse.shape, dtype=dt, device=device)
    ent_e = torch.zeros_like(mass)
    seen_e = torch.zeros(lq, dtype=torch.int64, device=device)
    step = max(1, (1 << 22) // max(1, lqk.q.shape[0] * len(keys)))
    for q0 in range(0, lq, step):
        q1 = min(lq, q0 + step)
        s = _excluded_logits(lqk, heads, keys_t, q0, q1).to(mass.dtype)
        row_lse = lse[:, q0:q1].to(mass.dtype)
        safe = torch.where(torch.isneginf(row_lse), torch.full_like(row_lse, float("inf")), row_lse)
        p = torch.exp(s - safe[..., None])
        mass[:, q0:q1] = p.sum(-1)
        seen_e[q0:q1] = (~torch.isneginf(s[0])).sum(-1)  # the mask is the same for every head
        ent_e[:, q0:q1] = torch.where(p > 0, -p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)
    real = torch.ones(lk, dtype=torch.bool, device=device)
    real[keys_t] = False
    padding = real[None] if spec.key_padding is None else spec.key_padding.to(device) & real[None]
    new_spec = replace(spec, key_padding=padding)
    rows_left = visible_counts(spec, lq, lk, device)[0][None, :] - seen_e  # visible keys not in E
    left = (rows_left > 0) | (spec.sinks is not None)
    z = (1 - mass).clamp(min=0)
    ok = left & (z > 0) & ~torch.isneginf(lse)
    z_safe = torch.where(ok, z, torch.ones_like(z))
    new_lse = torch.where(ok, lse.to(mass.dtype) + z_safe.log(), torch.full_like(mass, float("-inf")))
    new_ent = torch.where(
        ok, (entropy.to(mass.dtype) - ent_e) / z_safe + z_safe.log(), torch.zeros_like(mass)
    )
    return new_spec, new_lse.to(lse.dtype), new_ent.to(entropy.dtype)


def renormalize_probs(p: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """Dense P [..., Lq, Lk] without the keys `keys`, rows renormalised: P / (1 - Σ_E P) off E, 0 on
    E, and all zeros where nothing is left (the dense counterpart of `renormalize_layer`)."""
    out = p.clone()
    out[..., keys] = 0
    z = 1 - p[..., keys].sum(-1, keepdim=True)
    left = (out.sum(-1, keepdim=True) > 0) & (z > 0)
    return torch.where(left, out / torch.where(left, z, torch.ones_like(z)), torch.zeros_like(out))


# ---- rollout ------------------------------------------------------------------------------------


def _queries(queries, length: int) -> list[int]:
    if isinstance(queries, int) and not isinstance(queries, bool):
        queries = [queries]
    if isinstance(queries, str) or not isinstance(queries, Iterable):
        raise ValueError(f"queries must be a list of query positions, got {queries!r}")
    out = [index(q, length, "query") for q in queries]
    if not out:
        raise ValueError("queries is empty: name at least one query position")
    return out


def self_attention(trace, kind: str | None, what: str) -> tuple[str, tuple[int, int, int, int]]:
    """(kind, its shape) for a view that needs queries and keys to be the same tokens; else a
    ValueError naming the kinds to ask for."""
    kind = trace._kind(kind)
    shape = trace.shape(kind)
    if kind == "cross" or shape[2] != shape[3]:
        raise ValueError(
            f"{what} needs self-attention (queries and keys the same tokens); {kind} attention is "
            f"{shape[2]} queries × {shape[3]} keys: use kind='encoder' or 'decoder'"
        )
    return kind, shape


def check_residual(residual: float) -> float:
    if isinstance(residual, bool) or not isinstance(residual, int | float) or not 0 <= residual <= 1:
        raise ValueError(f"residual must be a number in [0, 1], got {residual!r}")
    return float(residual)


def rollout(
    trace,
    queries,
    residual: float = 0.5,
    heads=None,
    kind: str | None = None,
    layers=None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of the query positions `queries`: float32
    [len(queries), L].

    With Ā_l the mean of the chosen heads' P in layer l and Â_l = residual·I + (1 - residual)·Ā_l,
    each query's one-hot row is multiplied by Â_l from the last chosen layer down to the first
    (`layers`: None = all). Each step v ← residual·v + (1 - residual)·v·Ā_l is one pass over the
    layer's tiles: v·Ā_l = Σ_h Σ_q (v[q] / n_heads)·P[h, q, :] (`_weighted_received`, the digest's
    row-weighted column sums), never an L×L matrix. Queries are rolled one after another: the
    digest weights rows per head, so stacking n queries would need n copies of every chosen head's
    Q and K (as "heads"), for the same number of score evaluations. Self-attention only (the
    identity needs queries and keys to be the same positions).
    """
    kind, (n_layers, n_heads, lq, _) = self_attention(trace, kind, "rollout")
    residual = check_residual(residual)
    rows = _queries(queries, lq)
    chosen_heads = choose(heads, n_heads, "head")
    chosen_layers = choose(layers, n_layers, "layer")
    if len(set(chosen_layers)) != len(chosen_layers):
        raise ValueError(f"layers must be distinct, got {chosen_layers}")
    dtype = torch.float64 if trace._dtype(kind) == torch.float64 else torch.float32
    out = torch.zeros(len(rows), lq, dtype=torch.float64)
    for i, row in enumerate(rows):
        v = torch.zeros(lq, dtype=dtype, device=trace._device(kind))
        v[row] = 1
        for layer in sorted(chosen_layers, reverse=True):
            if residual < 1:
                weights = (v / len(chosen_heads))[None].expand(len(chosen_heads), lq)
                mixed = trace._weighted_received(layer, chosen_heads, weights.contiguous(), kind).sum(0)
                # a device map may hold layers on other devices than the vector's
                v = residual * v + (1 - residual) * mixed.to(v.device, dtype)
        out[i] = v.double().cpu()
    return out.float()


# ---- span maps ----------------------------------------------------------------------------------


def check_spans(spans, length: int, what: str) -> list[tuple[int, int]]:
    """Spans as (start, stop) int pairs with 0 <= start < stop <= length, none overlapping."""
    if isinstance(spans, str) or not isinstance(spans, Iterable):
        raise ValueError(f"{what} must be a list of (start, stop) token ranges, got {spans!r}")
    out = []
    for s in spans:
        if isinstance(s, range | slice) and (s.step or 1) == 1:
            s = (s.start, s.stop)
        if (
            not isinstance(s, tuple | list)
            or len(s) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in s)
        ):
            raise ValueError(f"{what}: each span must be a (start, stop) pair of ints, got {s!r}")
        start, stop = s
        if not 0 <= start < stop <= length:
            raise ValueError(
                f"{what}: span ({start}, {stop}) must satisfy 0 <= start < stop <= {length} (the positions)"
            )
        out.append((start, stop))
    if not out:
        raise ValueError(f"{what} is empty: name at least one (start, stop) range")
    ordered = sorted(out)
    for (a0, a1), (b0, b1) in itertools.pairwise(ordered):
        if b0 < a1:
            raise ValueError(f"{what}: spans ({a0}, {a1}) and ({b0}, {b1}) overlap; spans must be disjoint")
    return out


def span_blocks(spans: list[tuple[int, int]], length: int, device) -> torch.Tensor:
    """int64 [length]: the span index of each position, -1 outside every span."""
    block = torch.full((length,), -1, dtype=torch.int64)
    for i, (start, stop) in enumerate(spans):
        block[start:stop] = i
    return block.to(device)


def span_pooled(
    trace, spans, layers=None, heads=None, kind: str | None = None, key_spans=None
) -> torch.Tensor:
    """[layers, heads, len(spans), len(key_spans)] float32: cell [i, j] = mean over the query rows of
    span i of the mass they give to the keys of key span j (`key_spans` None = `spans`, the usual
    case of self-attention; cross attention's keys are another text). Spans are (start, stop)
    ranges, uneven and in any order, never overlapping; positions outside every span count nowhere."""
    kind = trace._kind(kind)
    n_layers, n_heads, lq, lk = trace.shape(kind)
    q_spans = check_spans(spans, lq, "spans")
    if key_spans is None:
        k_spans = check_spans(spans, lk, "spans")
    else:
        k_spans = check_spans(key_spans, lk, "key_spans")
    chosen_layers = choose(layers, n_layers, "layer")
    chosen_heads = choose(heads, n_heads, "head")
    device = trace._device(kind)
    blocks = (span_blocks(q_spans, lq, device), span_blocks(k_spans, lk, device), len(q_spans), len(k_spans))
    rows = torch.tensor([stop - start for start, stop in q_spans], dtype=torch.float64)
    maps = []
    for layer in chosen_layers:
        sums = trace._span_sums(layer, chosen_heads, blocks, kind).double().cpu()
        maps.append(sums / rows[None, :, None])
    return torch.stack(maps).float()


# ---- sentence spans -----------------------------------------------------------------------------

#: Word-piece markers a token's text may carry (GPT-2's Ġ/Ċ, SentencePiece's ▁, WordPiece's ##).
_MARKERS = re.compile(r"^(?:Ġ|Ċ|▁|##)+")
#: A token that ends a sentence: ., !, ?, …, or their CJK forms, optionally followed by quotes or brackets.
_SENTENCE_END = re.compile(f"[{re.escape(SENTENCE_ENDERS)}]+[{re.escape(SENTENCE_CLOSERS)}]*$")
#: A token of closing quotes or brackets only, which stays with the sentence it follows.
_CLOSING = re.compile(f"^[{re.escape(SENTENCE_CLOSERS)}]+$")
#: Special tokens ([CLS], <s>, <|endoftext|>): they join the sentence next to them, never make one.
_SPECIAL = re.compile(r"^(?:\[[A-Za-z_]+\]|<[^<>\s]*>|<\|[^|]*\|>)$")


def sentence_spans(
    tokens: Sequence[str], sentence_b_start: int | None = None, starts: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(start, stop) ranges covering every token, one per sentence.

    With `starts` (the token positions where a sentence begins, found from the text and the
    tokenizer's character offsets at trace time, extract/inputs.py) those are the cuts. Without
    them (a trace built from input ids, a slow tokenizer) the tokens themselves are split: a
    sentence ends after a token whose text ends in . ! ? … (or 。！？), markers such as Ġ ▁ ##
    stripped, and after the closing quotes or brackets that follow it. Either way the second text
    of a pair starts a new one, and special tokens ([CLS], [SEP], <s>) join their neighbours, a
    trailing run of them the sentence before."""
    n = len(tokens)
    cuts = {c for c in starts if 0 < c < n} if starts is not None else set()
    for i, tok in enumerate(tokens if starts is None else ()):
        if not _SPECIAL.match(tok) and _SENTENCE_END.search(_MARKERS.sub("", tok)):
            j = i + 1
            while j < n and _CLOSING.match(_MARKERS.sub("", tokens[j])):  # `."` and `!)` end it too
                j += 1
            if j < n:
                cuts.add(j)
    if sentence_b_start is not None and 0 < sentence_b_start < n:
        cuts.add(sentence_b_start)
    edges = [0, *sorted(cuts), n]
    spans = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    merged: list[tuple[int, int]] = []
    for start, stop in spans:
        if merged and all(_SPECIAL.match(t) for t in tokens[start:stop]):
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged
