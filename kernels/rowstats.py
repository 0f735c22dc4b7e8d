"""Row statistics: each query row's log-sum-exp and entropy, in one pass over its keys.

Every other view normalizes with the log-sum-exp stored here, so probabilities are exact and
each row is only ever reduced once per trace. With attention sinks the sink logit joins the
denominator (and the entropy, as one more outcome), as in gpt-oss's eager attention.

Torch backend: query chunks hold all visible keys of their rows, so the reduction is a plain
`logsumexp`; entropy is ``lse - Σ p·s`` (minus ``p_sink·sink`` with a sink). Empty rows give
``lse = -inf`` and entropy 0.
"""

from __future__ import annotations

import torch

from .masking import MaskSpec
from .scores import compute_dtype, masked_logits, query_chunks


def row_stats_torch(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """q [Hq, Lq, D], k [Hkv, Lk, D] -> (lse [Hq, Lq], entropy [Hq, Lq]) on q's device.

    Kept in the compute dtype (float64 for float64 inputs) so that a float64 model's views are
    exact to the float32 rounding of their output.
    """
    hq, lq, _ = q.shape
    group = hq // k.shape[0]
    heads = torch.arange(hq, device=q.device)
    lse = torch.empty(hq, lq, dtype=compute_dtype(q), device=q.device)
    ent = torch.empty_like(lse)
    for q0, q1, k0, k1 in query_chunks(q, k, spec):
        s = masked_logits(q[:, q0:q1], k, spec, heads, group, q0, k0, k1)  # [Hq, c, n]
        row_lse = torch.logsumexp(s, dim=-1)  # -inf for empty rows
        if spec.sinks is not None:
            sink = spec.sinks.to(s.dtype)[:, None].expand_as(row_lse)
            row_lse = torch.logaddexp(row_lse, sink)
        safe = torch.where(torch.isneginf(row_lse), torch.zeros_like(row_lse), row_lse)
        p = torch.exp(s - safe[..., None])
        p_s = torch.where(p > 0, p * s, torch.zeros_like(p)).sum(-1)
        h = safe - p_s
        if spec.sinks is not None:
            h = h - torch.exp(sink - safe) * sink
        h = torch.where(torch.isneginf(row_lse), torch.zeros_like(h), h)
        lse[:, q0:q1] = row_lse
        ent[:, q0:q1] = h
    return lse, ent
