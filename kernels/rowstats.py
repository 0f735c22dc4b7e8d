"""Row statistics: each query row's log-sum-exp and entropy, in one pass over its keys.

Every other view normalizes with the log-sum-exp stored here, so probabilities are exact and
each row is only ever reduced once per trace. With attention sinks the sink logit joins the
denominator (and the entropy, as one more outcome), as in gpt-oss's eager attention.

Torch backend: query chunks hold all visible keys of their rows, so the reduction needs no
online rescaling: with m the row maximum and e = exp(s - m), ``lse = m + log Σ e`` and the
entropy is ``lse - Σ p·s`` (minus ``p_sink·sink`` with a sink), `chunk_row_stats`, which also
hands the chunk's probabilities to the digest's one pass. Empty rows give ``lse = -inf`` and
entropy 0.
"""

from __future__ import annotations

import torch

from .autotune import tuned_loop_launch
from .masking import MaskSpec
from .scores import compute_dtype, keys_major, masked_logits, query_chunks
from .triton_common import (
    HAS_TRITON,
    LN2_C,
    gqa_pack,
    interior_bounds,
    key_bounds,
    launch,
    new_output,
    packed_rows,
    tile_logits2,
    tl,
    triton,
)


def chunk_row_stats(
    s: torch.Tensor,  # [H, c, n] masked logits of rows holding every visible key (consumed)
    cols: tuple[int, int],  # [a, b): the only columns of s that may hold masked (-inf) logits
    sinks: torch.Tensor | None,  # [H] sink logits, or None
    out: torch.Tensor | None = None,  # a buffer for e, of at least H · c · n elements
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(e [H, c, n], r [H, c], lse [H, c], entropy [H, c]) of a chunk, with P = e · r[..., None].

    e = exp(s - m) with m the row maximum, so the row statistics and every view of the chunk come
    from this one evaluation of its logits; r = 1 / Σ e, or exp(m - lse) with a sink in the
    denominator, and 0 on empty rows. `s` is consumed: shifted in place, then multiplied by e
    for the entropy lse - Σ p·s = log Σ e - Σ e·(s - m) / Σ e."""
    h, c, n = s.shape
    if n == 0:
        e = s
        m = l_sum = es = torch.zeros(h, c, dtype=s.dtype, device=s.device)
        empty = torch.ones(h, c, dtype=torch.bool, device=s.device)
    else:
        m = s.amax(-1)
        empty = torch.isneginf(m)
        m = m.masked_fill(empty, 0.0)
        s.sub_(m[..., None])
        e = torch.exp(s, out=None if out is None else out[: s.numel()].view(s.shape))
        if cols[1] > cols[0]:  # masked logits: e = 0 there, and 0·(-inf) must not make NaN
            s[..., cols[0] : cols[1]].nan_to_num_(neginf=0.0)
        l_sum = e.sum(-1)
        es = s.mul_(e).sum(-1)
    safe = torch.where(empty, torch.ones_like(l_sum), l_sum)
    log_l = torch.log(safe)
    lse = torch.where(empty, torch.full_like(m, float("-inf")), m + log_l)
    ent = torch.where(empty, torch.zeros_like(m), log_l - es / safe)
    if sinks is None:
        return e, torch.where(empty, torch.zeros_like(m), 1.0 / safe), lse, ent
    lse, ent = add_sinks(lse, ent, sinks)
    return e, torch.where(empty, torch.zeros_like(m), torch.exp(m - lse)), lse, ent


def row_stats_torch(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """q [Hq, Lq, D], k [Hkv, Lk, D] -> (lse [Hq, Lq], entropy [Hq, Lq]) on q's device.

    Kept in the compute dtype (float64 for float64 inputs) so that a float64 model's views are
    exact to the float32 rounding of their output.
    """
    hq, lq, _ = q.shape
    group = hq // k.shape[0]
    lse = torch.empty(hq, lq, dtype=compute_dtype(q), device=q.device)
    ent = torch.empty_like(lse)
    keys_t = keys_major(k)
    for q0, q1, k0, k1 in query_chunks(q, k, spec):
        s = masked_logits(q[:, q0:q1], k, spec, None, group, q0, k0, k1, keys_t=keys_t)  # [Hq, c, n]
        cols = spec.masked_columns(q0, q1, k0, k1)
        _, _, lse[:, q0:q1], ent[:, q0:q1] = chunk_row_stats(s, (cols[0] - k0, cols[1] - k0), spec.sinks)
    return lse, ent


if HAS_TRITON:
    # fmt: off
    @triton.jit
    def _row_stats_kernel(
        Q, K, KV_VALID, sq_h, sq_l, sq_d, sk_h, sk_l, sk_d, D,  # triton_common.launch
        scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin,
        LSE, ENT, Lq, Lk, group,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_D: tl.constexpr,
        PACK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SKIP_INTERIOR: tl.constexpr,
    ):
    # fmt: on
        # One program: BLOCK_M rows of PACK query heads that share a key head (packed_rows);
        # online max / sum / Σ p·t over their keys.
        h, pos, row_in, m_start, m_stop = packed_rows(tl.program_id(0), tl.program_id(1), Lq, PACK, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        q_ptrs = Q + h[:, None] * sq_h + pos[:, None] * sq_l + offs_d[None, :] * sq_d
        q = tl.load(q_ptrs, mask=row_in[:, None] & (offs_d < D)[None, :], other=0.0)
        k_base = K + ((tl.program_id(1) * PACK) // group).to(tl.int64) * sk_h
        # fmt: off
        lo, hi = key_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, BLOCK_N, BLOCK_M,
                            CAUSAL, HAS_WINDOW, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        in_lo, in_hi = interior_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, CAUSAL,
                                       HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, SKIP_INTERIOR)
        # fmt: on
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        a_i = tl.zeros([BLOCK_M], tl.float32)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = (start_n + tl.arange(0, BLOCK_N)).to(tl.int64)
            k_ptrs = k_base + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d
            # fmt: off
            t = tile_logits2(q, k_ptrs, pos, offs_n, h, offs_d, Lk, D, KV_VALID, scale, softcap, window, chunk,
                             chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin, CAUSAL, HAS_WINDOW,
                             HAS_SOFTCAP, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS, HAS_BIAS, IEEE,
                             (start_n < in_lo) | (start_n + BLOCK_N > in_hi), SKIP_INTERIOR)
            # fmt: on
            m_new = tl.maximum(m_i, tl.max(t, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(t - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            a_i = a_i * alpha + tl.sum(p * tl.where(p > 0, t, 0.0), 1)
            m_i = m_new
        empty = l_i == 0
        lse2 = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        # Natural units: lse = lse2 · ln2; Σ p·s = ln2 · Σ p·t.
        ent = tl.where(empty, 0.0, (lse2 - a_i / tl.where(empty, 1.0, l_i)) * LN2_C)
        tl.store(LSE + h * Lq + pos, lse2 * LN2_C, mask=row_in)
        tl.store(ENT + h * Lq + pos, ent, mask=row_in)


def row_stats_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    block_m: int | None = None,
    block_n: int | None = None,
    pack_gqa: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `row_stats_torch`: (lse [Hq, Lq], entropy [Hq, Lq]) float32 on q's device.

    `pack_gqa`: one program per group of query heads sharing a key head (see `gqa_pack`);
    None decides by the shapes.
    """
    hq, lq, d = q.shape
    lk = k.shape[1]
    group = hq // k.shape[0]

    def run(block_m: int, block_n: int, options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pack = gqa_pack(group, lq, block_m, pack_gqa)
        lse = new_output(hq, lq, device=q.device)
        ent = new_output(hq, lq, device=q.device)
        grid = (triton.cdiv(pack * lq, block_m), hq // pack)
        launch(
            _row_stats_kernel,
            grid,
            q,
            k,
            spec,
            lse,
            ent,
            lq,
            lk,
            group,
            PACK=pack,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            **options,
        )
        return lse, ent

    shape = (hq, k.shape[0], lq, lk, d, str(q.dtype), pack_gqa)
    lse, ent = tuned_loop_launch("row_stats", shape, d, q.dtype, block_m, block_n, run)
    if spec.sinks is not None:
        lse, ent = add_sinks(lse, ent, spec.sinks)
    return lse, ent


def add_sinks(lse: torch.Tensor, ent: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one sink logit per head into rows computed over the keys alone.

    With lse' = logaddexp(lse, sink): Σ_k p'_k s_k = e^(lse - lse') Σ_k p_k s_k, and the sink adds
    -p_sink·log p_sink to the entropy, so H' = lse' - e^(lse - lse')(lse - H) - p_sink · sink.
    """
    sink = sinks.to(device=lse.device, dtype=lse.dtype)[:, None].expand_as(lse)
    total = torch.logaddexp(lse, sink)
    keys_share = torch.exp(lse - total)  # 0 for empty rows
    mean_logit = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse - ent)
    ent = total - keys_share * mean_logit - torch.exp(sink - total) * sink
    return total, ent
