"""Neuron view for one query row of one head: the pieces of its attention, term by term.

For query ``i`` and keys ``j`` (bertviz's neuron view, generalized to any traced model):
``q = Q[i]`` [D], ``k = K[j]`` [n, D] (from key head ``h // group``), ``q_times_k = q * k``
elementwise [n, D] (before scaling; its row sums are the raw dot products), ``scores`` the
logits the softmax sees (scaled, soft-capped, -inf where masked) [n], and ``probs`` the
softmax normalized by the *full* row's log-sum-exp [n], so a key range shows true shares.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch

from .autotune import Config, tuned_launch
from .masking import MaskSpec
from .scores import compute_dtype, probs_from_logits
from .triton_common import (
    HAS_TRITON,
    LN2_C,
    bias2,
    block_d,
    launch,
    logits2,
    new_output,
    one_head,
    tl,
    triton,
    visible_pairs,
)


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
    q_idx = torch.tensor([query], device=q.device)
    k_idx = torch.arange(keys.start, keys.stop, device=q.device)
    s = spec.logits(prod.sum(-1)[None, None], torch.tensor([head], device=q.device), q_idx, k_idx)[0, 0]
    visible = spec.allowed(q_idx, k_idx)
    if visible is not None:
        s = s.masked_fill(~visible[0], float("-inf"))
    p = probs_from_logits(s[None], lse[head, query : query + 1])[0]
    return NeuronView(qv.float(), kv.float(), prod.float(), s.float(), p.float())


if HAS_TRITON:
    # fmt: off
    @triton.jit
    def _neuron_kernel(
        Q, K, KV_VALID, sq_d, sk_l, sk_d, D,  # triton_common.launch
        scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin,
        LSE2, PROD, SCORES, PROBS, query, k_begin, nk,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
    # fmt: on
        # One program: BLOCK_N keys of the single query row; q·k as an explicit product in fp32,
        # then a sum (IEEE, the precision of tl.dot, plays no part here).
        cols = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_n = k_begin + cols
        offs_d = tl.arange(0, BLOCK_D)
        col_in = cols < nk
        d_in = offs_d < D
        q = tl.load(Q + offs_d * sq_d, mask=d_in, other=0.0).to(tl.float32)
        k = tl.load(
            K + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d,
            mask=col_in[:, None] & d_in[None, :],
            other=0.0,
        ).to(tl.float32)
        prod = q[None, :] * k
        tl.store(PROD + cols[:, None] * D + offs_d[None, :], prod, mask=col_in[:, None] & d_in[None, :])
        raw = tl.sum(prod, 1)
        t = logits2(raw, scale, softcap, HAS_SOFTCAP)
        # fmt: off
        visible = visible_pairs(query, offs_n, col_in, KV_VALID, offs_n, window, chunk, chunk_shift, FACTS,
                                n_facts, CAUSAL, HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        # fmt: on
        if HAS_BIAS:  # the spec's bias holds this head's row alone (`neuron_triton`): bias row 0
            t = t + bias2(BIAS, 0, query, offs_n, bias_n, bias_origin)
        t = tl.where(visible, t, float("-inf"))
        lse2 = tl.load(LSE2 + query)
        tl.store(SCORES + cols, t * LN2_C, mask=col_in)
        tl.store(PROBS + cols, tl.exp2(t - lse2), mask=col_in)


def neuron_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    lse: torch.Tensor,
    head: int,
    query: int,
    keys: range,
    block_n: int | None = None,
) -> NeuronView:
    """Triton twin of `neuron_torch`."""
    d = q.shape[2]
    dev = q.device
    n = len(keys)
    qh, kh, lse2 = one_head(q, k, lse, head)
    qv = qh[query]
    one = spec.for_heads([head])  # its bias row, the kernel's row 0

    def run(_: int, block_n: int, options: dict) -> tuple[torch.Tensor, ...]:
        prod = new_output(n, d, device=dev)
        scores = new_output(n, device=dev)
        probs = new_output(n, device=dev)
        grid = (triton.cdiv(n, block_n),)
        args = (lse2, prod, scores, probs, query, keys.start, n)
        launch(_neuron_kernel, grid, qv, kh, one, *args, BLOCK_N=block_n, **options)
        return prod, scores, probs

    default = (1, block_n or neuron_block(d), {"num_warps": 4})
    shape = (n, d, str(q.dtype))
    space = partial(neuron_space, d)
    prod, scores, probs = tuned_launch("neuron", shape, default, space, run, block_n is not None)
    return NeuronView(qv.float(), kh[keys.start : keys.stop].float(), prod, scores, probs)


def neuron_block(head_dim: int) -> int:
    """Keys a program takes: the q×k block [block_n, BLOCK_D] lives in registers, and 8,192 fp32
    values over 4 warps (64 a thread) compile without spills for every head dim
    (benchmarks/compiled.py)."""
    return max(16, 8192 // block_d(head_dim))


def neuron_space(head_dim: int) -> list[Config]:
    """The autotune space, the default first: half, the same and twice the keys, 4 or 8 warps
    (twice the keys only with 8 warps: the same 64 values a thread)."""
    base = neuron_block(head_dim)
    space = [(1, base, {"num_warps": 4})]
    for block_n in (max(16, base // 2), base, 2 * base):
        for warps in (4, 8):
            config = (1, block_n, {"num_warps": warps})
            if config not in space and (block_n <= base or warps == 8):
                space.append(config)
    return space
