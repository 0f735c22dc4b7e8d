"""Probability tiles: exact P[q, k] for any query range × key range of one head.

Computed from Q, K and the row log-sum-exp of `rowstats`, so a tile costs only its own
``nq × nk × D`` multiply-adds and never needs the rest of its rows.
"""

from __future__ import annotations

import torch

from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, rows_per_chunk


def probs_tile_torch(
    q: torch.Tensor,  # [Hq, Lq, D]
    k: torch.Tensor,  # [Hkv, Lk, D]
    spec: MaskSpec,
    lse: torch.Tensor,  # [Hq, Lq]
    head: int,
    queries: range,
    keys: range,
) -> torch.Tensor:
    """P [len(queries), len(keys)] of head `head`, float32 on q's device."""
    group = q.shape[0] // k.shape[0]
    heads = torch.tensor([head], device=q.device)
    out = torch.empty(len(queries), len(keys), dtype=torch.float32, device=q.device)
    step = rows_per_chunk(1, len(keys))
    for r0 in range(0, len(queries), step):
        r1 = min(len(queries), r0 + step)
        q0, q1 = queries.start + r0, queries.start + r1
        s = masked_logits(q[head : head + 1, q0:q1], k, spec, heads, group, q0, keys.start, keys.stop)
        out[r0:r1] = probs_from_logits(s, lse[head : head + 1, q0:q1])[0]
    return out
