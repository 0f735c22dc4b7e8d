"""Blocks of exact logits and probabilities for the chunked torch backend.

Numerics (shared by every family in this package):

* Scores are accumulated in float32 (float64 when Q and K are float64, so that a float64 model
  can be checked to 1e-12), whatever the storage dtype of Q and K.
* A row's probabilities are ``exp(s - lse)`` with ``lse`` the row's natural log-sum-exp,
  computed once per trace by `rowstats.row_stats` (including the sink logit, if any).
* Empty rows (no visible key) have ``lse = -inf``; `probs_from_logits` maps them to zeros.
* Grouped-query attention: query head ``h`` reads key head ``h // group``; K is gathered per
  chunk (``n × D`` per head, small beside the ``rows × n`` scores), never expanded for the trace.
* At most ``chunk × Lk × heads`` scores exist at once; ``chunk`` comes from `rows_per_chunk`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .interrupt import checkpoint
from .masking import MaskSpec

#: Upper bound on the score elements one chunk may hold (1 Mi = 4 MB in float32): small enough
#: that a few chunk temporaries stay far below an L×L matrix at 4k tokens, big enough for BLAS.
SCORE_BUDGET = 1 << 20


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rows_per_chunk(num_heads: int, num_keys: int, budget: int | None = None) -> int:
    """Query rows per chunk so that heads × rows × keys stays within `budget` (default SCORE_BUDGET)."""
    budget = SCORE_BUDGET if budget is None else budget
    return max(1, budget // max(1, num_heads * num_keys))


def masked_logits(
    q: torch.Tensor,  # [h, cq, D] query rows of heads `heads`
    k: torch.Tensor,  # [Hkv, Lk, D] all key heads
    spec: MaskSpec,
    heads: torch.Tensor,  # [h] int64, query head indices of the rows in q
    group: int,  # query heads per key head
    q_start: int,
    k_start: int,
    k_stop: int,
) -> torch.Tensor:
    """Masked logits [h, cq, k_stop - k_start]; invisible pairs are -inf."""
    dt = compute_dtype(q)
    kv = k[heads // group, k_start:k_stop].to(dt)  # [h, n, D]
    q_idx = torch.arange(q_start, q_start + q.shape[1], device=q.device)
    k_idx = torch.arange(k_start, k_stop, device=q.device)
    s = spec.logits(torch.matmul(q.to(dt), kv.transpose(-1, -2)), heads, q_idx, k_idx)
    visible = spec.allowed(q_idx, k_idx)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    return s


def probs_from_logits(s: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(s - lse[..., None]); rows with lse = -inf (empty) become zeros, never NaN."""
    safe = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return torch.exp(s - safe[..., None].to(s.dtype))


def query_chunks(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, q_start: int = 0, q_stop: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1) chunks covering queries [q_start, q_stop) with every visible key of those rows."""
    lq, lk = q.shape[1], k.shape[1]
    q_stop = lq if q_stop is None else q_stop
    span = spec.key_range(q_start, q_stop, lk)
    step = rows_per_chunk(q.shape[0], max(1, min(lk, span[1] - span[0])))
    for q0 in range(q_start, q_stop, step):
        checkpoint()  # between chunks: an abandoned call stops here (kernels/interrupt.py)
        q1 = min(q_stop, q0 + step)
        k0, k1 = spec.key_range(q0, q1, lk)
        yield q0, q1, k0, k1
