"""Head statistics: one number per (layer, head) that says what kind of head it is.

Each is a mean over the head's non-empty query rows ``q`` (rows with at least one visible key):

* ``entropy``: the row's attention entropy in nats (from `rowstats`, sink included as an outcome).
* ``previous_token``: ``P[q, q-1]``, over rows ``q >= 1`` only.
* ``self``: ``P[q, q]``.
* ``first_token``: ``P[q, 0]``, the mass on the first token (an attention sink, often [CLS]/BOS).
* ``mean_distance``: ``Σ_k P[q, k]·|q - k|`` in tokens.

Two more need the token ids of the queries and keys (``q_ids``, ``k_ids``; the same for
self-attention) and count visible keys only; each is a mean over the rows that have at least one
such key (its *has-key* rows), not over every non-empty row:

* ``duplicate_token``: ``Σ P[q, k]`` over keys ``k ≠ q`` with ``k_ids[k] == q_ids[q]``, the mass
  on other occurrences of the query's token.
* ``induction``: ``Σ P[q, k]`` over keys ``k >= 1``, ``k - 1 ≠ q``, with ``k_ids[k-1] == q_ids[q]``,
  the mass on the token after an earlier (or any other) occurrence of the query's token.

A statistic with no qualifying row is 0. Positions compare query and key indices directly,
which for cross-attention (decoder queries, encoder keys) is only an index comparison.

Both backends produce the same per-row terms ``[4, Hq, Lq]`` (previous, self, first, distance)
in the fused pass over P (`digest`): the torch twin from `chunk_terms` here, the Triton kernel
in its own loop; given token ids, also the token terms ``[4, Hq, Lq]`` (`TOKEN_ROW_TERMS`:
duplicate mass, duplicate has-key, induction mass, induction has-key; has-keys 1.0 or 0.0), the
torch twin's from `chunk_token_terms`. `reduce_head_stats` turns them into the means above, once,
for both (and for the dense eager trace).
"""

from __future__ import annotations

import torch

from .facts import HEAD_STAT_NAMES

ROW_TERMS = ("previous_token", "self", "first_token", "mean_distance")
#: Rows of the token terms: (mass, has-key) of duplicate_token, then of induction.
TOKEN_ROW_TERMS = ("duplicate_token", "duplicate_token_has_key", "induction", "induction_has_key")
#: The statistics from the row terms and the row entropy alone (no token ids needed).
POSITION_STAT_NAMES = ("entropy", *ROW_TERMS)
#: The statistics that need token ids (`chunk_token_terms`).
TOKEN_STAT_NAMES = ("duplicate_token", "induction")


def _diagonal(p: torch.Tensor, q0: int, k0: int, offset: int) -> torch.Tensor:
    """P[q, q - offset] [H, c] inside a chunk starting at (q0, k0); 0 where that key is outside."""
    c, n = p.shape[1], p.shape[2]
    col = torch.arange(q0, q0 + c, device=p.device) - offset - k0
    valid = (col >= 0) & (col < n)
    vals = p.gather(2, col.clamp(0, max(n - 1, 0))[None, :, None].expand(p.shape[0], c, 1))[..., 0]
    return torch.where(valid[None, :], vals, torch.zeros_like(vals))


def chunk_terms(p: torch.Tensor, q0: int, k0: int) -> torch.Tensor:
    """Row terms [4, H, c] (ROW_TERMS order) of a probability chunk p [H, c, n] at (q0, k0): the
    diagonals and the first column gathered, the distance from `_distance` (one pass over p)."""
    h, c, n = p.shape
    terms = torch.zeros(4, h, c, dtype=p.dtype, device=p.device)
    if n == 0:
        return terms
    terms[0] = _diagonal(p, q0, k0, 1)
    terms[1] = _diagonal(p, q0, k0, 0)
    if k0 == 0:
        terms[2] = p[:, :, 0]
    terms[3] = _distance(p, q0, k0)
    return terms


def _distance(e: torch.Tensor, q0: int, k0: int) -> torch.Tensor:
    """Σ_k e[h, q, k]·|q - k| [H, c] of a chunk at (q0, k0) in one pass over e: keys left of every
    row (k <= q0) and right of every row (k >= q0 + c) by one matrix product each against
    (1, distance to the chunk's edge), both terms non-negative so nothing cancels; the few keys
    between the rows' positions by |q - k| itself."""
    h, c, n = e.shape
    dt, dev = e.dtype, e.device
    a = min(n, max(0, q0 + 1 - k0))  # columns [0, a): k <= q0 <= q
    b = min(n, max(a, q0 + c - k0))  # columns [b, n): k >= q0 + c > q
    rows = torch.arange(c, dtype=dt, device=dev)  # q - q0
    dist = torch.zeros(h, c, dtype=dt, device=dev)
    if a > 0:  # q - k = (q - q0) + (q0 - k)
        w = torch.stack(
            [
                torch.ones(a, dtype=dt, device=dev),
                torch.arange(q0 - k0, q0 - k0 - a, -1, dtype=dt, device=dev),
            ],
            1,
        )
        both = torch.matmul(e[..., :a], w)
        dist += rows * both[..., 0] + both[..., 1]
    if b < n:  # k - q = (q0 + c - q) + (k - q0 - c)
        w = torch.stack(
            [
                torch.ones(n - b, dtype=dt, device=dev),
                torch.arange(k0 + b - q0 - c, k0 + n - q0 - c, dtype=dt, device=dev),
            ],
            1,
        )
        both = torch.matmul(e[..., b:], w)
        dist += (c - rows) * both[..., 0] + both[..., 1]
    if b > a:
        rel = (
            torch.arange(q0, q0 + c, device=dev)[:, None] - torch.arange(k0 + a, k0 + b, device=dev)[None, :]
        )
        dist += (e[..., a:b] * rel.abs().to(dt)).sum(-1)
    return dist


def token_matches(
    q_ids: torch.Tensor, k_ids: torch.Tensor, q0: int, q1: int, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(duplicate, induction) bool [q1 - q0, k1 - k0]: the key pairs of each statistic among
    queries [q0, q1) and keys [k0, k1) by token id, before visibility (see the module docstring)."""
    qpos = torch.arange(q0, q1, device=q_ids.device)[:, None]
    kpos = torch.arange(k0, k1, device=q_ids.device)[None, :]
    qi = q_ids[q0:q1, None]
    dup = (k_ids[None, k0:k1] == qi) & (kpos != qpos)
    before = k_ids[max(k0 - 1, 0) : max(k1 - 1, 0)]  # k_ids[k - 1] of keys k >= max(k0, 1)
    ind = torch.zeros_like(dup)
    first = 1 if k0 == 0 else 0
    if k1 > k0 + first:
        ind[:, first:] = (before[None, :] == qi) & (kpos[:, first:] - 1 != qpos)
    return dup, ind


def chunk_token_terms(
    p: torch.Tensor,  # [H, c, n] probabilities of queries [q0, q0 + c), keys [k0, k0 + n)
    visible: torch.Tensor | None,  # [c, m] bool visible pairs (MaskSpec.allowed), None = all
    q_ids: torch.Tensor,  # [Lq] int64 token ids of every query position
    k_ids: torch.Tensor,  # [Lk] int64 token ids of every key position
    q0: int,
    k0: int,
    nonempty: torch.Tensor,  # [H, c] bool rows with lse > -inf
    visible_from: int = 0,  # `visible` covers the chunk's columns [visible_from, visible_from + m); others are visible
) -> torch.Tensor:
    """Token terms [4, H, c] (TOKEN_ROW_TERMS order) of rows whose visible keys all lie in the
    chunk. The matching pairs are few (a token's other occurrences): their mass is gathered pair
    by pair unless they are many, so the chunk is not multiplied by a dense match matrix."""
    h, c, n = p.shape
    dup, ind = token_matches(q_ids, k_ids, q0, q0 + c, k0, k0 + n)
    if visible is not None:
        cols = slice(visible_from, visible_from + visible.shape[1])
        dup[:, cols] &= visible
        ind[:, cols] &= visible
    out = torch.zeros(4, h, c, dtype=p.dtype, device=p.device)
    for i, match in enumerate((dup, ind)):
        rows, cols = match.nonzero(as_tuple=True)
        if rows.numel() * 8 <= match.numel():
            out[2 * i].index_add_(1, rows, p[:, rows, cols])
        else:
            out[2 * i] = (p * match.to(p.dtype)).sum(-1)
        out[2 * i + 1] = (match.any(-1)[None, :] & nonempty).to(p.dtype)
    return out


def reduce_head_stats(
    lse: torch.Tensor, entropy: torch.Tensor, terms: torch.Tensor, token_terms: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Means over non-empty rows: dict name -> [Hq] float32, the five POSITION_STAT_NAMES; with
    `token_terms` [4, Hq, Lq] (TOKEN_ROW_TERMS) also the TOKEN_STAT_NAMES, means over their
    has-key rows: all seven of HEAD_STAT_NAMES, in that order."""
    nonempty = ~torch.isneginf(lse)  # [Hq, Lq]
    rows = nonempty.double().sum(1)
    rows_after_first = nonempty[:, 1:].double().sum(1)
    sums = {"entropy": torch.where(nonempty, entropy, torch.zeros_like(entropy)).double().sum(1)}
    for i, name in enumerate(ROW_TERMS):
        sums[name] = torch.where(nonempty, terms[i], torch.zeros_like(terms[i])).double().sum(1)
    counts = {name: rows_after_first if name == "previous_token" else rows for name in sums}
    if token_terms is not None:
        for i, name in enumerate(TOKEN_STAT_NAMES):
            has = token_terms[2 * i + 1] > 0.5
            counts[name] = has.double().sum(1)
            sums[name] = (
                torch.where(has, token_terms[2 * i], torch.zeros_like(token_terms[2 * i])).double().sum(1)
            )
    out = {}
    for name in HEAD_STAT_NAMES:
        if name in sums:
            count = counts[name]
            out[name] = torch.where(
                count > 0, sums[name] / count.clamp(min=1), torch.zeros_like(sums[name])
            ).float()
    return out
