"""Top-k keys per query row of one head, with their exact probabilities.

Rows with fewer than ``k`` visible keys are padded with index -1 and probability 0. Ties keep
the order `torch.topk` gives; probabilities are exact (normalized by the row's log-sum-exp).

Triton path: the probability-tile kernel computes a chunk of rows over the keys they can see
and `torch.topk` selects on the device, chunk by chunk, so memory stays at one chunk. A fused
running-top-k kernel would save that chunk's round trip through device memory; it is not
written yet.
"""

from __future__ import annotations

import torch

from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, rows_per_chunk
from .tiles import probs_tile_triton


def topk_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    lse: torch.Tensor,
    head: int,
    count: int,
    queries: range,
    tile=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices int64 [nq, count], probs float32 [nq, count]) on q's device.

    `tile`, if given, computes probabilities for (queries, keys) ranges (the Triton tile kernel);
    otherwise logits come from the torch backend.
    """
    group = q.shape[0] // k.shape[0]
    heads = torch.tensor([head], device=q.device)
    lk = k.shape[1]
    idx = torch.full((len(queries), count), -1, dtype=torch.int64, device=q.device)
    val = torch.zeros(len(queries), count, dtype=torch.float32, device=q.device)
    step = rows_per_chunk(1, lk)
    for r0 in range(0, len(queries), step):
        r1 = min(len(queries), r0 + step)
        q0, q1 = queries.start + r0, queries.start + r1
        k0, k1 = spec.key_range(q0, q1, lk)
        take = min(count, k1 - k0)
        if take == 0:
            continue
        if tile is None:
            s = masked_logits(q[head : head + 1, q0:q1], k, spec, heads, group, q0, k0, k1)[0]
            top_s, top_i = torch.topk(s, take, dim=-1)
            visible = ~torch.isneginf(top_s)
            p = probs_from_logits(top_s[None], lse[head : head + 1, q0:q1])[0]
        else:
            top_p, top_i = torch.topk(tile(q, k, spec, lse, head, range(q0, q1), range(k0, k1)), take, dim=-1)
            visible, p = top_p > 0, top_p
        idx[r0:r1, :take] = torch.where(visible, top_i + k0, torch.full_like(top_i, -1))
        val[r0:r1, :take] = torch.where(visible, p, torch.zeros_like(p)).float()
    return idx, val


def topk_triton(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, head: int, count: int, queries: range
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over probability tiles from the Triton tile kernel (see module docstring)."""
    return topk_torch(q, k, spec, lse, head, count, queries, tile=probs_tile_triton)
