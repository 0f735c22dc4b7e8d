"""Head statistics: one number per (layer, head) that says what kind of head it is.

Each is a mean over the head's non-empty query rows ``q`` (rows with at least one visible key):

* ``entropy``: the row's attention entropy in nats (from `rowstats`, sink included as an outcome).
* ``previous_token``: ``P[q, q-1]``, over rows ``q >= 1`` only.
* ``self``: ``P[q, q]``.
* ``first_token``: ``P[q, 0]``, the mass on the first token (an attention sink, often [CLS]/BOS).
* ``mean_distance``: ``Σ_k P[q, k]·|q - k|`` in tokens.

A statistic with no qualifying row is 0. Positions compare query and key indices directly,
which for cross-attention (decoder queries, encoder keys) is only an index comparison.

Both backends produce the same per-row terms ``[4, Hq, Lq]`` (previous, self, first, distance)
in the fused pass over P (`digest`): the torch twin from `chunk_terms` here, the Triton kernel
in its own loop. `reduce_head_stats` turns them into the means above, once, for both (and for
the dense eager trace).
"""

from __future__ import annotations

import torch

from .facts import HEAD_STAT_NAMES

ROW_TERMS = ("previous_token", "self", "first_token", "mean_distance")


def _diagonal(p: torch.Tensor, q0: int, k0: int, offset: int) -> torch.Tensor:
    """P[q, q - offset] [H, c] inside a chunk starting at (q0, k0); 0 where that key is outside."""
    c, n = p.shape[1], p.shape[2]
    col = torch.arange(q0, q0 + c, device=p.device) - offset - k0
    valid = (col >= 0) & (col < n)
    vals = p.gather(2, col.clamp(0, max(n - 1, 0))[None, :, None].expand(p.shape[0], c, 1))[..., 0]
    return torch.where(valid[None, :], vals, torch.zeros_like(vals))


def chunk_terms(p: torch.Tensor, q0: int, k0: int) -> torch.Tensor:
    """Row terms [4, H, c] (ROW_TERMS order) of a probability chunk p [H, c, n] at (q0, k0)."""
    h, c, n = p.shape
    terms = torch.zeros(4, h, c, dtype=p.dtype, device=p.device)
    if n == 0:
        return terms
    terms[0] = _diagonal(p, q0, k0, 1)
    terms[1] = _diagonal(p, q0, k0, 0)
    if k0 == 0:
        terms[2] = p[:, :, 0]
    dist = (
        torch.arange(q0, q0 + c, device=p.device)[:, None]
        - torch.arange(k0, k0 + n, device=p.device)[None, :]
    )
    terms[3] = (p * dist.abs().to(p.dtype)).sum(-1)
    return terms


def reduce_head_stats(
    lse: torch.Tensor, entropy: torch.Tensor, terms: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Means over non-empty rows: dict name -> [Hq] float32 (names in HEAD_STAT_NAMES)."""
    nonempty = ~torch.isneginf(lse)  # [Hq, Lq]
    rows = nonempty.double().sum(1)
    rows_after_first = nonempty[:, 1:].double().sum(1)
    sums = {"entropy": torch.where(nonempty, entropy, torch.zeros_like(entropy)).double().sum(1)}
    for i, name in enumerate(ROW_TERMS):
        sums[name] = torch.where(nonempty, terms[i], torch.zeros_like(terms[i])).double().sum(1)
    out = {}
    for name in HEAD_STAT_NAMES:
        count = rows_after_first if name == "previous_token" else rows
        out[name] = torch.where(
            count > 0, sums[name] / count.clamp(min=1), torch.zeros_like(sums[name])
        ).float()
    return out
