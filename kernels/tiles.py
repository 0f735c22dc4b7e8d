"""Probability tiles: exact P[q, k] for any query range × key range of one head.

Computed from Q, K and the row log-sum-exp of `rowstats`, so a tile costs only its own
``nq × nk × D`` multiply-adds and never needs the rest of its rows.
"""

from __future__ import annotations

from functools import partial

import torch

from .autotune import Config, loop_config, loop_space, tuned_launch
from .masking import MaskSpec
from .scores import masked_logits, probs_from_logits, rows_per_chunk
from .triton_common import HAS_TRITON, interior_bounds, launch, new_output, one_head, tile_logits2, tl, triton


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


if HAS_TRITON:
    # fmt: off
    @triton.jit
    def _probs_tile_kernel(
        Q, K, KV_VALID, sq_l, sq_d, sk_l, sk_d, D,  # triton_common.launch
        scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin,
        LSE2, OUT, q_begin, nq, k_begin, nk, Lk,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SKIP_INTERIOR: tl.constexpr,
    ):
    # fmt: on
        # One program: a BLOCK_M × BLOCK_N tile of P; Q and K already point at the head's rows.
        rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_m = q_begin + rows
        offs_n = k_begin + cols
        offs_d = tl.arange(0, BLOCK_D)
        row_in = rows < nq
        q = tl.load(
            Q + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d,
            mask=row_in[:, None] & (offs_d < D)[None, :],
            other=0.0,
        )
        k_ptrs = K + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d
        key_end = tl.minimum(Lk, k_begin + nk)
        m_start = q_begin + tl.program_id(0) * BLOCK_M
        n_start = k_begin + tl.program_id(1) * BLOCK_N
        # fmt: off
        in_lo, in_hi = interior_bounds(m_start, tl.minimum(m_start + BLOCK_M, q_begin + nq), key_end, window,
                                       chunk, chunk_shift, FACTS, n_facts, CAUSAL, HAS_WINDOW, HAS_PADDING,
                                       HAS_CHUNK, HAS_SEGMENTS, SKIP_INTERIOR)
        # The spec's bias holds this head's row alone (`probs_tile_triton`): bias row 0.
        t = tile_logits2(q, k_ptrs, offs_m, offs_n, rows * 0, offs_d, key_end, D, KV_VALID, scale, softcap,
                         window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin, CAUSAL,
                         HAS_WINDOW, HAS_SOFTCAP, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS, HAS_BIAS,
                         IEEE, (n_start < in_lo) | (n_start + BLOCK_N > in_hi), SKIP_INTERIOR)
        # fmt: on
        lse2 = tl.load(LSE2 + offs_m, mask=row_in, other=float("inf"))
        p = tl.exp2(t - lse2[:, None])
        tl.store(OUT + rows[:, None] * nk + cols[None, :], p, mask=row_in[:, None] & (cols < nk)[None, :])


def probs_tile_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    lse: torch.Tensor,
    head: int,
    queries: range,
    keys: range,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton twin of `probs_tile_torch`."""
    d = q.shape[2]
    qh, kh, lse2 = one_head(q, k, lse, head)
    one = spec.for_heads([head])  # its bias row, the kernel's row 0

    def run(block_m: int, block_n: int, options: dict) -> torch.Tensor:
        out = new_output(len(queries), len(keys), device=q.device)
        grid = (triton.cdiv(len(queries), block_m), triton.cdiv(len(keys), block_n))
        args = (lse2, out, queries.start, len(queries), keys.start, len(keys), k.shape[1])
        launch(_probs_tile_kernel, grid, qh, kh, one, *args, BLOCK_M=block_m, BLOCK_N=block_n, **options)
        return out

    # The looping kernels' tile shapes (spill-free); one tile per program needs no pipelining.
    shape = (len(queries), len(keys), k.shape[1], d, str(q.dtype))
    default = _one_tile(loop_config(d, q.dtype, block_m, block_n))
    space = partial(_tile_space, d, q.dtype)
    return tuned_launch("probs_tile", shape, default, space, run, block_m is not None or block_n is not None)


def _one_tile(config: Config) -> Config:
    m, n, options = config
    return m, n, {name: value for name, value in options.items() if name != "num_stages"}


def _tile_space(head_dim: int, dtype: torch.dtype) -> list[Config]:
    space: list[Config] = []
    for config in map(_one_tile, loop_space(head_dim, dtype)):
        if config not in space:
            space.append(config)
    return space
