"""Top-k keys per query row of one head, with their exact probabilities.

Rows with fewer than ``k`` visible keys are padded with index -1 and probability 0. Among equal
probabilities the torch backend keeps `torch.topk`'s order and the fused kernel prefers the
lower key index; probabilities are exact (normalized by the row's log-sum-exp).

Triton path (`topk_triton`): one fused kernel keeps a running top-k per query row while it walks
the row's visible key blocks, so nothing but ``rows × k`` leaves the chip. Each candidate is one
int64 sort key: the probability's float32 bits (non-negative floats order like their bits) above
``2^31 - 1 - key index`` (ties go to the lower index). A key block whose best candidate beats no
row's current k-th best is skipped, which after the first blocks is most of them; otherwise
running set and block are merged by k rounds of "take the maximum" (cheaper than `tl.sort`'s
bitonic network for these widths, and far cheaper under the interpreter). ``k`` is rounded up to
a power of two (the key block width); above `FUSED_MAX_K` (16 for fp32 inputs) the kernel
would spill registers, so the probability-tile kernel computes chunks of rows and `torch.topk` selects,
chunk by chunk, on the device.
"""

from __future__ import annotations

from functools import partial

import torch

from .autotune import Config, skip_interior_default, tuned_launch
from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, rows_per_chunk
from .tiles import probs_tile_triton
from .triton_common import (
    DOT_MIN,
    HAS_TRITON,
    block_d,
    interior_bounds,
    key_bounds,
    launch,
    one_head,
    tile_logits2,
    tl,
    triton,
)

#: Largest k the fused kernel keeps in registers (rounded up to a power of two; it is also the
#: key-block width). fp32 inputs take Triton's FMA path for Q·Kᵀ, which spills registers beyond
#: 16-key blocks at d >= 80 (benchmarks/compiled.py); fp16/bf16 run on tensor cores up to 128.
FUSED_MAX_K = 128
FUSED_MAX_K_FP32 = 16
#: A candidate's low 32 bits hold INDEX_CODE - key index (2^31 - 1 - index), so that among equal
#: probabilities the lower index has the larger sort key.
INDEX_CODE = 2**31 - 1


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


if HAS_TRITON:
    _INDEX_CODE = tl.constexpr(INDEX_CODE)

    @triton.jit
    def _merged_top(best, keys, BLOCK_M: tl.constexpr, KP: tl.constexpr):
        """The KP largest keys of each row of best and keys (both [BLOCK_M, KP]), largest first.

        KP rounds of "take the row maximum, retire it": keys are unique (they hold the key index)
        except for the zeros of empty slots, which decode to "no key" however many are kept.
        The two sets stay apart (no join / reshape): Triton 3.9's layout pass fails on that form.
        """
        cols = tl.arange(0, KP)
        top = tl.zeros([BLOCK_M, KP], tl.int64)
        for j in range(KP):
            m = tl.maximum(tl.max(best, 1), tl.max(keys, 1))
            top = tl.where(cols[None, :] == j, tl.maximum(m, 0)[:, None], top)
            best = tl.where(best == m[:, None], -1, best)
            keys = tl.where(keys == m[:, None], -1, keys)
        return top

    # fmt: off
    @triton.jit
    def _topk_kernel(
        Q, K, KV_VALID, sq_l, sq_d, sk_l, sk_d, D,  # triton_common.launch
        scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin,
        LSE2, OUT, q_begin, nq, Lk,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, KP: tl.constexpr, SKIP_INTERIOR: tl.constexpr,
    ):
    # fmt: on
        # One program: BLOCK_M query rows of one head (Q, K already point at it); key blocks of KP.
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_m = q_begin + rows
        offs_d = tl.arange(0, BLOCK_D)
        row_in = rows < nq
        q = tl.load(
            Q + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d,
            mask=row_in[:, None] & (offs_d < D)[None, :],
            other=0.0,
        )
        lse2 = tl.load(LSE2 + offs_m, mask=row_in, other=float("inf"))
        m_start = q_begin + tl.program_id(0) * BLOCK_M
        m_stop = tl.minimum(m_start + BLOCK_M, q_begin + nq)
        # fmt: off
        lo, hi = key_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, KP, BLOCK_M,
                            CAUSAL, HAS_WINDOW, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        in_lo, in_hi = interior_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, CAUSAL,
                                       HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, SKIP_INTERIOR)
        # fmt: on
        best = tl.zeros([BLOCK_M, KP], tl.int64)  # probability 0: decodes to "no key"
        for start_n in range(lo, hi, KP):
            offs_n = (start_n + tl.arange(0, KP)).to(tl.int64)
            k_ptrs = K + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d
            # fmt: off
            # The spec's bias holds this head's row alone (`topk_triton`): bias row 0.
            t = tile_logits2(q, k_ptrs, offs_m, offs_n, rows * 0, offs_d, Lk, D, KV_VALID, scale, softcap,
                             window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin, CAUSAL,
                             HAS_WINDOW, HAS_SOFTCAP, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS,
                             HAS_BIAS, IEEE, (start_n < in_lo) | (start_n + KP > in_hi), SKIP_INTERIOR)
            # fmt: on
            p = tl.where(row_in[:, None], tl.exp2(t - lse2[:, None]), 0.0)
            bits = p.to(tl.int32, bitcast=True).to(tl.int64)
            # INDEX_CODE - index, the tensor first: the interpreter cannot index a constexpr's result.
            keys = (bits << 32) | (-offs_n + _INDEX_CODE)[None, :]
            kth = tl.min(best, 1)
            if tl.max(tl.max((keys > kth[:, None]).to(tl.int32), 1), 0) > 0:
                best = _merged_top(best, keys, BLOCK_M, KP)
        cols = tl.arange(0, KP)
        tl.store(OUT + rows[:, None] * KP + cols[None, :], best, mask=row_in[:, None])


def topk_triton(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, head: int, count: int, queries: range
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `topk_torch` (see the module docstring)."""
    if count > (FUSED_MAX_K_FP32 if q.dtype == torch.float32 else FUSED_MAX_K):
        return topk_torch(q, k, spec, lse, head, count, queries, tile=probs_tile_triton)
    d = q.shape[2]
    kp = max(DOT_MIN, triton.next_power_of_2(count))
    qh, kh, lse2 = one_head(q, k, lse, head)
    one = spec.for_heads([head])  # its bias row, the kernel's row 0

    def run(block_m: int, block_n: int, options: dict) -> torch.Tensor:
        packed = torch.empty(len(queries), kp, dtype=torch.int64, device=q.device)
        grid = (triton.cdiv(len(queries), block_m),)
        args = (lse2, packed, queries.start, len(queries), k.shape[1])
        launch(_topk_kernel, grid, qh, kh, one, *args, BLOCK_M=block_m, KP=block_n, **options)
        return packed

    shape = (len(queries), k.shape[1], d, str(q.dtype), kp)
    space = partial(topk_space, kp, d, q.dtype)
    packed = tuned_launch("top_k", shape, topk_config(kp, d, q.dtype), space, run)
    packed = packed[:, :count]
    probs = (packed >> 32).to(torch.int32).view(torch.float32)
    index = INDEX_CODE - (packed & 0xFFFFFFFF)
    return torch.where(probs > 0, index, torch.full_like(index, -1)), probs.clone()


def topk_config(kp: int, head_dim: int, dtype: torch.dtype) -> Config:
    """The fused kernel's default launch shape: (query rows, kp keys a block, options). The merge
    sorts block_m × 2·kp int64 in registers; a key block is kp rows (at kp = 128, d = 256 in fp32
    one pipeline stage is already 128 KiB). fp32 (Triton's FMA path holds the Q tile in registers)
    takes at most 32 rows: 64 spill on sm_90 from d = 64 (8 bytes a thread) to d = 256 (6 KB
    unmasked), 32 compile without spills (`python -m benchmarks.compiled`)."""
    block_m = max(DOT_MIN, min(32 if dtype == torch.float32 else 64, 2048 // kp))
    stages = max(1, min(3, (64 << 10) // (kp * block_d(head_dim) * dtype.itemsize)))
    return block_m, kp, {"num_stages": stages, "num_warps": 4, "SKIP_INTERIOR": skip_interior_default()}


def topk_space(kp: int, head_dim: int, dtype: torch.dtype) -> list[Config]:
    """The autotune space of the fused kernel, `topk_config` first: row blocks of 16 up to the
    default's (the merge's registers), 4 or 8 warps; SKIP_INTERIOR is a toggle (`autotune.TOGGLES`)."""
    default = topk_config(kp, head_dim, dtype)
    space = [default]
    for block_m in (16, 32, 64):
        for warps in (4, 8):
            config = (block_m, kp, {**default[2], "num_warps": warps})
            if block_m <= default[0] and config not in space:
                space.append(config)
    return space
