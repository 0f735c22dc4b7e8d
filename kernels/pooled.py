"""Pooled maps and received attention.

Pooled map at output size ``(sq, sk)``: query positions are cut into ``sq`` contiguous blocks
and keys into ``sk``; block ``j`` of a length-``L`` axis holds positions
``[floor(j·L/s), floor((j+1)·L/s))``, so blocks differ in size by at most one when ``s`` does
not divide ``L``. Cell ``[i, j]`` is the mean, over the query rows of block ``i``, of the
probability mass those rows give to key block ``j``: a pooled row sums to one (less with sinks,
zero for empty rows), whatever the block sizes, so maps at every zoom level read the same way.

Received attention is the column sum ``Σ_q P[q, k]``: how much attention each key receives.
"""

from __future__ import annotations

import torch

from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, query_chunks


def block_of(length: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block index [length] of every position when `length` positions are cut into `size` blocks."""
    if not 1 <= size <= length:
        raise ValueError(f"block count must be in [1, {length}], got {size}")
    i = torch.arange(length, device=device, dtype=torch.int64)
    return ((i + 1) * size - 1) // length


def block_sizes(length: int, size: int) -> torch.Tensor:
    """Number of positions [size] in each block of `block_of`."""
    j = torch.arange(size + 1, dtype=torch.int64)
    edges = (j * length) // size
    return edges[1:] - edges[:-1]


def pooled_torch(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, size_q: int, size_k: int
) -> torch.Tensor:
    """Pooled map [Hq, size_q, size_k], float32 on q's device."""
    hq, lq, _ = q.shape
    lk = k.shape[1]
    group = hq // k.shape[0]
    heads = torch.arange(hq, device=q.device)
    qb, kb = block_of(lq, size_q, q.device), block_of(lk, size_k, q.device)
    acc = torch.zeros(hq, size_q, size_k, dtype=torch.float64, device=q.device)
    for q0, q1, k0, k1 in query_chunks(q, k, spec):
        p = probs_from_logits(masked_logits(q[:, q0:q1], k, spec, heads, group, q0, k0, k1), lse[:, q0:q1])
        by_key = torch.zeros(hq, q1 - q0, size_k, dtype=p.dtype, device=q.device)
        by_key.index_add_(2, kb[k0:k1], p)
        acc.index_add_(1, qb[q0:q1], by_key.to(acc.dtype))
    rows = block_sizes(lq, size_q).to(device=q.device, dtype=acc.dtype)
    return (acc / rows[None, :, None]).to(torch.float32)


def received_torch(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor) -> torch.Tensor:
    """Column sums [Hq, Lk] of P, float32 on q's device."""
    hq = q.shape[0]
    group = hq // k.shape[0]
    heads = torch.arange(hq, device=q.device)
    acc = torch.zeros(hq, k.shape[1], dtype=torch.float64, device=q.device)
    for q0, q1, k0, k1 in query_chunks(q, k, spec):
        p = probs_from_logits(masked_logits(q[:, q0:q1], k, spec, heads, group, q0, k0, k1), lse[:, q0:q1])
        acc[:, k0:k1] += p.sum(1)
    return acc.to(torch.float32)
