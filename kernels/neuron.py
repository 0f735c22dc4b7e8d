"""Neuron view for one query row of one head: the pieces of its attention, term by term.

For query ``i`` and keys ``j`` (bertviz's neuron view, generalized to any traced model):
``q = Q[i]`` [D], ``k = K[j]`` [n, D] (from key head ``h // group``), ``q_times_k = q * k``
elementwise [n, D] (before scaling; its row sums are the raw dot products), ``scores`` the
logits the softmax sees (scaled, soft-capped, -inf where masked) [n], and ``probs`` the
softmax normalized by the *full* row's log-sum-exp [n], so a key range shows true shares.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .masking import MaskSpec
from .scores import compute_dtype, probs_from_logits


class NeuronView(NamedTuple):
    q: torch.Tensor  # [D]
    k: torch.Tensor  # [n, D]
    q_times_k: torch.Tensor  # [n, D]
    scores: torch.Tensor  # [n]
    probs: torch.Tensor  # [n]


def neuron_torch(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, head: int, query: int, keys: range
) -> NeuronView:
    """The neuron view of query row `query` of head `head` over `keys`, float32 on q's device."""
    group = q.shape[0] // k.shape[0]
    dt = compute_dtype(q)
    qv = q[head, query].to(dt)
    kv = k[head // group, keys.start : keys.stop].to(dt)
    prod = qv[None, :] * kv
    s = spec.logits(prod.sum(-1))
    visible = spec.allowed(
        torch.tensor([query], device=q.device), torch.arange(keys.start, keys.stop, device=q.device)
    )
    if visible is not None:
        s = s.masked_fill(~visible[0], float("-inf"))
    p = probs_from_logits(s[None], lse[head, query : query + 1])[0]
    return NeuronView(qv.float(), kv.float(), prod.float(), s.float(), p.float())
