"""Head statistics: one number per (layer, head) that says what kind of head it is.

Each is a mean over the head's non-empty query rows ``q`` (rows with at least one visible key):

* ``entropy``: the row's attention entropy in nats (from `rowstats`, sink included as an outcome).
* ``previous_token``: ``P[q, q-1]``, over rows ``q >= 1`` only.
* ``self``: ``P[q, q]``.
* ``first_token``: ``P[q, 0]``, the mass on the first token (an attention sink, often [CLS]/BOS).
* ``mean_distance``: ``Σ_k P[q, k]·|q - k|`` in tokens.

A statistic with no qualifying row is 0. Positions compare query and key indices directly,
which for cross-attention (decoder queries, encoder keys) is only an index comparison.
"""

from __future__ import annotations

import torch

from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, query_chunks

HEAD_STAT_NAMES = ("entropy", "previous_token", "self", "first_token", "mean_distance")


def _diagonal(p: torch.Tensor, q0: int, k0: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [H, c], valid [c]) of P[q, q - offset] inside a chunk starting at (q0, k0)."""
    c, n = p.shape[1], p.shape[2]
    col = torch.arange(q0, q0 + c, device=p.device) - offset - k0
    valid = (col >= 0) & (col < n)
    vals = p.gather(2, col.clamp(0, max(n - 1, 0))[None, :, None].expand(p.shape[0], c, 1))[..., 0]
    return torch.where(valid[None, :], vals, torch.zeros_like(vals)), valid


def head_stats_torch(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, entropy: torch.Tensor
) -> dict[str, torch.Tensor]:
    """dict name -> [Hq] float32 on q's device (names in HEAD_STAT_NAMES)."""
    hq, _lq, _ = q.shape
    group = hq // k.shape[0]
    heads = torch.arange(hq, device=q.device)
    nonempty = ~torch.isneginf(lse)  # [Hq, Lq]
    sums = {name: torch.zeros(hq, dtype=torch.float64, device=q.device) for name in HEAD_STAT_NAMES}
    sums["entropy"] = torch.where(nonempty, entropy, torch.zeros_like(entropy)).double().sum(1)
    for q0, q1, k0, k1 in query_chunks(q, k, spec):
        p = probs_from_logits(masked_logits(q[:, q0:q1], k, spec, heads, group, q0, k0, k1), lse[:, q0:q1])
        if p.shape[-1] == 0:
            continue
        for name, offset in (("previous_token", 1), ("self", 0)):
            sums[name] += _diagonal(p, q0, k0, offset)[0].double().sum(1)
        if k0 == 0:
            sums["first_token"] += p[:, :, 0].double().sum(1)
        dist = (
            torch.arange(q0, q1, device=q.device)[:, None] - torch.arange(k0, k1, device=q.device)[None, :]
        ).abs()
        sums["mean_distance"] += (p * dist.to(p.dtype)).double().sum((1, 2))
    rows = nonempty.double().sum(1)
    rows_after_first = nonempty[:, 1:].double().sum(1)
    out = {}
    for name, total in sums.items():
        count = rows_after_first if name == "previous_token" else rows
        out[name] = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).float()
    return out
