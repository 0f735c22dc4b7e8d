"""Blocks of exact logits and probabilities for the chunked torch backend.

Numerics (shared by every family in this package):

* Scores are accumulated in float32 (float64 when Q and K are float64, so that a float64 model
  can be checked to 1e-12), whatever the storage dtype of Q and K.
* A row's probabilities are ``exp(s - lse)`` with ``lse`` the row's natural log-sum-exp,
  computed once per trace (including the sink logit, if any), by `rowstats.row_stats` or inside
  the digest's one pass (``exp(s - m) / Σ exp(s - m)``, m the row maximum: the same numbers).
* Empty rows (no visible key) have ``lse = -inf``; `probs_from_logits` maps them to zeros.
* Grouped-query attention: query head ``h`` reads key head ``h // group``; a chunk of every head
  multiplies each key head's group of query heads at once, a chunk of chosen heads gathers K
  (``n × D`` per head, small beside the ``rows × n`` scores); K is never expanded for the trace.
* At most ``chunk × Lk × heads`` scores exist at once; ``chunk`` comes from `rows_per_chunk`,
  sized by each chunk's own key range (`query_chunks`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from .interrupt import checking, checkpoint, current_check
from .masking import MaskSpec

#: Upper bound on the score elements one chunk may hold (1 Mi = 4 MB in float32): small enough
#: that a few chunk temporaries stay far below an L×L matrix at 4k tokens, big enough for BLAS
#: and for few chunks (the digest's one pass on the 2-core CPU machine, GPT-2-shaped 12 heads:
#: 1 Mi beat 256 Ki and 512 Ki at 2,048 and 8,192 tokens, and 2 Mi and 4 Mi at 8,192).
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
    heads: torch.Tensor | None,  # [h] int64, query head indices of the rows in q; None = all, in order
    group: int,  # query heads per key head
    q_start: int,
    k_start: int,
    k_stop: int,
    *,
    keys_t: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked logits [h, cq, k_stop - k_start]; invisible pairs are -inf.

    With ``heads=None`` (q holds every query head in order) K is neither gathered nor expanded:
    the query heads of one key head are one matrix product, against `keys_t` where given (K
    transposed, [Hkv, D, Lk] contiguous in the compute dtype: `keys_major`), into `out` where
    given (a buffer of at least h · cq · n elements). A power-of-two scaling is folded into the
    queries (bit-identical, one pass fewer over the scores); the mask is applied only to the key
    columns `MaskSpec.masked_columns` names (the diagonal block of a causal chunk).
    """
    dt = compute_dtype(q)
    h, cq, d = q.shape
    n = k_stop - k_start
    exact_scale = math.frexp(spec.scaling)[0] == 0.5
    qs = q.to(dt) * spec.scaling if exact_scale else q.to(dt)
    if heads is None:
        kv_t = (
            k[:, k_start:k_stop].to(dt).transpose(-1, -2) if keys_t is None else keys_t[..., k_start:k_stop]
        )
        shape = (k.shape[0], group * cq, n)
        into = None if out is None else out[: h * cq * n].view(shape)
        raw = torch.matmul(qs.reshape(k.shape[0], group * cq, d), kv_t, out=into).view(h, cq, n)
    else:
        kv = k[heads // group, k_start:k_stop].to(dt)  # [h, n, D]
        raw = torch.matmul(qs, kv.transpose(-1, -2))
    q_idx = torch.arange(q_start, q_start + cq, device=q.device)
    k_idx = torch.arange(k_start, k_stop, device=q.device)
    if exact_scale and spec.bias is None and spec.softcap is None:
        s = raw
    else:
        all_heads = torch.arange(h, device=q.device) if heads is None else heads
        s = spec.logits(raw, all_heads, q_idx, k_idx, scaled=exact_scale)
    j0, j1 = spec.masked_columns(q_start, q_start + cq, k_start, k_stop)
    if j1 > j0:
        visible = spec.allowed(q_idx, k_idx[j0 - k_start : j1 - k_start])
        if visible is not None:
            s[..., j0 - k_start : j1 - k_start].masked_fill_(~visible, float("-inf"))
    return s


def keys_major(k: torch.Tensor) -> torch.Tensor:
    """K [Hkv, Lk, D] as [Hkv, D, Lk], contiguous in the compute dtype: the operand layout that
    makes the chunks' Q·Kᵀ products fastest (measured on one core of the CPU machine: 1.1 ns per
    score against 1.7 ns for the transposed view); one copy the size of K."""
    return k.to(compute_dtype(k)).transpose(-1, -2).contiguous()


def probs_from_logits(s: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(s - lse[..., None]); rows with lse = -inf (empty) become zeros, never NaN."""
    safe = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return torch.exp(s - safe[..., None].to(s.dtype))


def query_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    q_start: int = 0,
    q_stop: int | None = None,
    budget: int | None = None,
    align: int = 1,
) -> Iterator[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1) chunks covering queries [q_start, q_stop) with every visible key of those rows.

    Each chunk holds at most `budget` (default SCORE_BUDGET) scores over all heads: its rows are
    sized by the key range of the chunk itself, so the short rows of a causal mask come in big
    chunks. `align`: rows per chunk a multiple of it where the budget allows (pooled blocks)."""
    lq, lk = q.shape[1], k.shape[1]
    q_stop = lq if q_stop is None else q_stop
    heads = q.shape[0]

    def width(a: int, b: int) -> int:
        lo, hi = spec.key_range(a, b, lk)
        return max(1, min(lk, hi - lo))

    q0 = q_start
    while q0 < q_stop:
        checkpoint()  # between chunks: an abandoned call stops here (kernels/interrupt.py)
        # The most rows whose key range keeps the chunk within the budget (at least one row): the
        # key range only grows with the rows, so a bisection finds it.
        lo, hi = 1, min(q_stop - q0, rows_per_chunk(heads, width(q0, q0 + 1), budget))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid <= rows_per_chunk(heads, width(q0, q0 + mid), budget):
                lo = mid
            else:
                hi = mid - 1
        step = lo
        if step >= align:
            step -= step % align
        q1 = min(q_stop, q0 + step)
        k0, k1 = spec.key_range(q0, q1, lk)
        yield q0, q1, k0, k1
        q0 = q1


Chunk = tuple[int, int, int, int]
T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _single_threaded(work: Callable[[list[Chunk]], T], part: list[Chunk], check) -> T:
    torch.set_num_threads(1)  # this worker's own OpenMP/MKL setting (per thread)
    if check is None:
        return work(part)
    with checking(check):
        return work(part)


def map_chunks(chunks: list[Chunk], work: Callable[[list[Chunk]], T]) -> list[T]:
    """`work` over the chunks split round-robin into one part per thread torch would use here
    (`torch.get_num_threads()`), each part on a worker thread whose torch ops run on one core;
    the results in part order (sum them in that order: deterministic).

    Why: a chunk's ops are small (a few hundred thousand scores), and on a busy machine every
    OpenMP parallel region of two threads waits for a descheduled partner: measured on the
    2-core CPU machine under load, one 12-head layer's pass at 2,048 tokens took 9.8 s with two
    intra-op threads and 0.35 s with one. Parallel chunks keep both cores busy without a barrier
    per op. The caller's check (`interrupt.checking`) holds in the workers too."""
    n = min(torch.get_num_threads(), len(chunks))
    if n <= 1:
        return [work(chunks)]
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="attnscope-chunks")
        pool = _pool
    check = current_check()
    futures = [pool.submit(_single_threaded, work, chunks[i::n], check) for i in range(n)]
    errors = [f.exception() for f in futures]  # waits for every part before raising
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]
