"""The digest: one pass over P that yields any of a layer's pooled map, its received attention
and its head statistics' row terms (definitions in `pooled` and `headstats`, which this module
fuses and neither of which imports it).

Torch twin (`digest_torch`): query chunks holding every visible key of their rows
(`scores.query_chunks`), so that without a log-sum-exp (``lse=None``) the row statistics come
from the same evaluation of each chunk's logits (`rowstats.chunk_row_stats`): one pass per layer
gives the row statistics, the pooled map, received attention and every head-statistic term
(issue 18). Each chunk's probabilities are pooled by key-block sums without scatters where the
block layout allows (`pooled.key_block_sums`), summed by column, and reduced to row terms
(`headstats.chunk_terms`, `chunk_token_terms`); pooled and received accumulate in float64. The
chunks are split between worker threads of one core each (`scores.map_chunks`), and their
logits and exponentials reuse two buffers per worker.

Triton path (`digest_triton`): a program per (query block, head, or group of heads sharing a key
head when `triton_common.gqa_pack` packs them) loops over its visible key blocks and adds
whichever results are asked for: pooled blocks (the tile is pooled by two one-hot matrix
products, ``onehotᵀ_q · P · onehot_k``, on tensor cores to fp32 accuracy
(`triton_common.onehot_dot`), then added with atomics; no L×L buffer), column sums (atomics),
and the per-row head-statistic terms (plain stores: each row belongs to one program). Atomic
float additions make the last bits order-dependent; the tests allow for that.

Extras of the same pass (issue 15), each a keyword of both twins and of `backend.digest`:

* ``token_ids=(q_ids [Lq], k_ids [Lk])`` with ``terms=True``: "token_terms" [4, Hq, Lq]
  (`headstats.TOKEN_ROW_TERMS`: duplicate-token mass and has-key, induction mass and has-key,
  over visible keys only). The kernel loads its rows' ids, each key block's ids and the ids of
  the keys before them (ids become int32 ranks of one id space on the host).
* ``row_weights`` [Hq, Lq] (any reals): "weighted_received" [Hq, Lk] float32,
  ``Σ_q w[h, q]·P[h, q, k]``, a row vector times P per head (attention rollout); column sums of
  the weighted tile added with atomics (one per head of a GQA pack: one-hot products take [0, 1]).
* ``blocks=(q_block [Lq], k_block [Lk], n_q, n_k)`` (ids in [-1, n), -1 = no block):
  "span_sums" [Hq, n_q, n_k] float32, the mass of each (query block, key block) pair (the caller
  divides by rows per span). Where a program's rows, and a key tile, touch block ids within a
  tile's width of each other (spans of consecutive positions; `_span_cells` sizes the one-hot
  widths on the host), the kernel pools them as the pooled map (two one-hot products, then
  atomics per cell); otherwise (ids scattered over a tile) one atomic per pair.
"""

from __future__ import annotations

import torch

from .autotune import digest_config, tuned_loop_launch
from .headstats import chunk_terms, chunk_token_terms, reduce_head_stats
from .interrupt import checkpoint
from .masking import MaskSpec
from .pooled import add_blocks, block_of, finish_blocks, key_block_sums
from .rowstats import chunk_row_stats
from .scores import compute_dtype, keys_major, map_chunks, masked_logits, query_chunks
from .triton_common import (
    DOT_MIN,
    HAS_TRITON,
    gqa_pack,
    interior_bounds,
    key_bounds,
    launch,
    new_output,
    onehot_dot,
    packed_rows,
    safe_lse2,
    tile_logits2,
    tl,
    triton,
)

TokenIds = tuple[torch.Tensor, torch.Tensor]  # (q_ids [Lq], k_ids [Lk]) int64
Blocks = tuple[torch.Tensor, torch.Tensor, int, int]  # (q_block [Lq], k_block [Lk], n_q, n_k) int64


def check_extras(
    q: torch.Tensor,
    k: torch.Tensor,
    terms: bool,
    token_ids: TokenIds | None,
    row_weights: torch.Tensor | None,
    blocks: Blocks | None,
) -> None:
    """ValueError unless the extras of a digest call fit q [Hq, Lq, D] and k [Hkv, Lk, D]."""
    hq, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    if token_ids is not None:
        if not terms:
            raise ValueError("token_ids come with terms=True (the token terms sit beside the row terms)")
        q_ids, k_ids = token_ids
        if tuple(q_ids.shape) != (lq,) or tuple(k_ids.shape) != (lk,):
            raise ValueError(
                f"token_ids must be ([{lq}], [{lk}]), got {tuple(q_ids.shape)}, {tuple(k_ids.shape)}"
            )
    if row_weights is not None and tuple(row_weights.shape) != (hq, lq):
        raise ValueError(
            f"row_weights must be [{hq}, {lq}] (one row per head), got {tuple(row_weights.shape)}"
        )
    if blocks is not None:
        q_block, k_block, n_q, n_k = blocks
        if tuple(q_block.shape) != (lq,) or tuple(k_block.shape) != (lk,):
            raise ValueError(
                f"blocks must give [{lq}] and [{lk}] ids, got {tuple(q_block.shape)}, {tuple(k_block.shape)}"
            )
        if n_q < 1 or n_k < 1:
            raise ValueError(f"block counts must be >= 1, got {n_q}, {n_k}")
        for ids, n, what in ((q_block, n_q, "query"), (k_block, n_k, "key")):
            if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= n):
                raise ValueError(
                    f"{what} block ids must be in [-1, {n}), got [{int(ids.min())}, {int(ids.max())}]"
                )


def digest_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    lse: torch.Tensor | None,
    pooled_size: tuple[int, int] | None = None,
    received: bool = False,
    terms: bool = False,
    *,
    token_ids: TokenIds | None = None,
    row_weights: torch.Tensor | None = None,
    blocks: Blocks | None = None,
) -> dict[str, torch.Tensor]:
    """Torch twin of `digest_triton`: one pass over P for "pooled" [Hq, sq, sk] (float32),
    "received" [Hq, Lk] (float32), "terms" [4, Hq, Lq] (headstats.ROW_TERMS, compute dtype) and,
    with `token_ids` (and `terms`), "token_terms" [4, Hq, Lq] (headstats.TOKEN_ROW_TERMS, compute
    dtype); with `row_weights` [Hq, Lq], "weighted_received" [Hq, Lk] (float32,
    ``Σ_q w[h, q]·P[h, q, k]``); with `blocks`, "span_sums" [Hq, n_q, n_k] (float32, the mass of
    each pair of blocks; id -1 = in no block).

    ``lse=None``: the row statistics come from the same pass, "lse" and "entropy" [Hq, Lq]
    (compute dtype, as `rowstats.row_stats_torch`): a chunk holds every visible key of its rows,
    so its logits are evaluated once for the statistics and every result (`chunk_row_stats`)."""
    check_extras(q, k, terms, token_ids, row_weights, blocks)
    hq, lq, _ = q.shape
    lk = k.shape[1]
    group = hq // k.shape[0]
    dev = q.device
    dt = compute_dtype(q)
    out: dict[str, torch.Tensor] = {}
    if lse is None:
        out["lse"] = torch.empty(hq, lq, dtype=dt, device=dev)
        out["entropy"] = torch.empty(hq, lq, dtype=dt, device=dev)
    stat_dtype = dt if lse is None else lse.dtype
    align = 1
    if pooled_size is not None:
        sq, sk = pooled_size
        qb = block_of(lq, sq, dev)
        if lq % sq == 0:  # chunks of whole query blocks
            align = lq // sq
    if terms:
        out["terms"] = torch.zeros(4, hq, lq, dtype=stat_dtype, device=dev)
    if token_ids is not None:
        q_ids, k_ids = (t.to(device=dev, dtype=torch.int64) for t in token_ids)
        out["token_terms"] = torch.zeros(4, hq, lq, dtype=stat_dtype, device=dev)
    if row_weights is not None:
        weights = row_weights.to(device=dev, dtype=dt)
    if blocks is not None:  # id -1 goes to one extra block on each axis, dropped at the end
        n_q, n_k = blocks[2], blocks[3]
        span_q, span_k = (
            torch.where(b < 0, n, b).to(device=dev, dtype=torch.int64)
            for b, n in zip(blocks[:2], (n_q, n_k), strict=True)
        )

    def sums() -> dict[str, torch.Tensor]:
        """One part's accumulators (float64); rows of `out` are written in place, each by one chunk."""
        f64 = {"dtype": torch.float64, "device": dev}
        acc = {}
        if pooled_size is not None:
            acc["pooled"] = torch.zeros(hq, sq, sk, **f64)
        if received:
            acc["received"] = torch.zeros(hq, lk, **f64)
        if row_weights is not None:
            acc["weighted_received"] = torch.zeros(hq, lk, **f64)
        if blocks is not None:
            acc["span_sums"] = torch.zeros(hq, n_q + 1, n_k + 1, **f64)
        return acc

    chunks = list(query_chunks(q, k, spec, align=align))
    biggest = max((hq * (q1 - q0) * (k1 - k0) for q0, q1, k0, k1 in chunks), default=0)
    keys_t = keys_major(k)

    def part(chunks: list[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
        acc = sums()
        # The chunk's logits and exponentials in buffers reused chunk after chunk: fresh memory
        # for each would cost page faults (about half of the exp pass, measured on one core).
        buffers = torch.empty(2, biggest, dtype=dt, device=dev)
        for q0, q1, k0, k1 in chunks:
            checkpoint()  # between chunks: an abandoned call stops here (kernels/interrupt.py)
            add_chunk(q0, q1, k0, k1, acc, buffers)
        return acc

    def add_chunk(q0: int, q1: int, k0: int, k1: int, acc: dict[str, torch.Tensor], buffers) -> None:
        if k1 == k0:  # rows with no visible key: zeros everywhere, statistics of empty rows
            if lse is not None:
                return
            s = torch.empty(hq, q1 - q0, 0, dtype=dt, device=dev)
        else:  # [Hq, c, n]
            s = masked_logits(q[:, q0:q1], k, spec, None, group, q0, k0, k1, keys_t=keys_t, out=buffers[0])
        j0, j1 = spec.masked_columns(q0, q1, k0, k1)
        if lse is None:  # P = e · r[..., None], made in place
            e, r, out["lse"][:, q0:q1], out["entropy"][:, q0:q1] = chunk_row_stats(
                s, (j0 - k0, j1 - k0), spec.sinks, out=buffers[1]
            )
            if k1 == k0:
                return
            chunk_lse = out["lse"][:, q0:q1]
            p = e.mul_(r[..., None])
        else:  # P itself, in place
            chunk_lse = lse[:, q0:q1]
            safe = torch.where(torch.isneginf(chunk_lse), torch.full_like(chunk_lse, float("inf")), chunk_lse)
            p = s.sub_(safe[..., None].to(s.dtype)).exp_()
        if pooled_size is not None:
            first, by_key = key_block_sums(p, k0, lk, sk)
            pooled = acc["pooled"][:, :, first : first + by_key.shape[2]]
            pooled.index_add_(1, qb[q0:q1], by_key.to(torch.float64))
        if received:
            acc["received"][:, k0:k1] += p.sum(1)
        if terms:
            out["terms"][:, :, q0:q1] = chunk_terms(p, q0, k0)
        if token_ids is not None:
            visible = None  # only the columns the mask may touch (MaskSpec.masked_columns)
            if j1 > j0:
                visible = spec.allowed(torch.arange(q0, q1, device=dev), torch.arange(j0, j1, device=dev))
            out["token_terms"][:, :, q0:q1] = chunk_token_terms(
                p, visible, q_ids, k_ids, q0, k0, ~torch.isneginf(chunk_lse), visible_from=j0 - k0
            )
        if row_weights is not None or blocks is not None:
            if row_weights is not None:
                acc["weighted_received"][:, k0:k1] += torch.bmm(weights[:, None, q0:q1], p)[:, 0]
            if blocks is not None:
                add_blocks(acc["span_sums"], p, span_q[q0:q1], span_k[k0:k1])

    parts = map_chunks(chunks, part)
    total = {name: sum(p[name] for p in parts[1:]) + parts[0][name] for name in parts[0]}
    if pooled_size is not None:
        out["pooled"] = finish_blocks(total["pooled"], lq, sq)
    if received:
        out["received"] = total["received"].to(torch.float32)
    if row_weights is not None:
        out["weighted_received"] = total["weighted_received"].to(torch.float32)
    if blocks is not None:
        out["span_sums"] = total["span_sums"][:, :n_q, :n_k].to(torch.float32)
    return out


# Single-result twins: the references the tests hold the kernels to.
def pooled_torch(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, size_q: int, size_k: int
) -> torch.Tensor:
    """Pooled map [Hq, size_q, size_k], float32 on q's device."""
    return digest_torch(q, k, spec, lse, pooled_size=(size_q, size_k))["pooled"]


def received_torch(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor) -> torch.Tensor:
    """Column sums [Hq, Lk] of P, float32 on q's device."""
    return digest_torch(q, k, spec, lse, received=True)["received"]


def row_terms_torch(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor) -> torch.Tensor:
    """Per-row head-statistic terms [4, Hq, Lq] (headstats.ROW_TERMS order), compute dtype."""
    return digest_torch(q, k, spec, lse, terms=True)["terms"]


def head_stats_torch(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, entropy: torch.Tensor
) -> dict[str, torch.Tensor]:
    """dict name -> [Hq] float32 on q's device (names in headstats.HEAD_STAT_NAMES)."""
    return reduce_head_stats(lse, entropy, row_terms_torch(q, k, spec, lse))


if HAS_TRITON:

    @triton.jit
    def _row_cells(h, h0, qb, qb0, row_ok, NQ, PACK: tl.constexpr, WIDTH: tl.constexpr, CELLS: tl.constexpr):
        """The pooled cells of a program's rows: row r (head h[r], query block qb[r]) goes to cell
        c = (h - h0) · WIDTH + qb - qb0 (qb0 the first block, WIDTH the blocks one head's rows may
        touch). Returns (one-hot [rows, CELLS] of rows with row_ok, each cell's head, block, in range)."""
        cell = (h - h0) * WIDTH + qb - qb0
        ci = tl.arange(0, CELLS)
        onehot = ((cell[:, None] == ci[None, :]) & row_ok[:, None]).to(tl.float32)
        cell_bin = qb0 + ci % WIDTH
        return onehot, h0 + ci // WIDTH, cell_bin, (ci // WIDTH < PACK) & (cell_bin < NQ)

    @triton.jit
    def _pool_tile(
        p, kb, kb_ok, kb0, onehot_rows, cell_head, cell_bin, cell_in, OUT, NQ, NK, WIDTH: tl.constexpr
    ):
        """Add the mass of the tile p [rows, keys] to OUT [heads, NQ, NK] at (cell head, cell block,
        key block kb of each key with kb_ok, within WIDTH of kb0): two one-hot products on tensor
        cores (`onehot_dot`), then one atomic per cell."""
        onehot_k = ((kb[:, None] - kb0) == tl.arange(0, WIDTH)[None, :]) & kb_ok[:, None]
        by_key = onehot_dot(p, onehot_k, False)  # [rows, WIDTH]
        cells = onehot_dot(by_key, tl.trans(onehot_rows), True)  # [CELLS, WIDTH]
        cj = kb0 + tl.arange(0, WIDTH)
        tl.atomic_add(
            OUT + cell_head[:, None] * NQ * NK + cell_bin[:, None] * NK + cj[None, :],
            cells,
            mask=cell_in[:, None] & (cj < NK)[None, :],
        )

    # fmt: off
    @triton.jit
    def _digest_kernel(
        Q, K, KV_VALID, sq_h, sq_l, sq_d, sk_h, sk_l, sk_d, D,  # triton_common.launch
        scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin,
        LSE2, POOL, REC, TERMS, Lq, Lk, group, SQ, SK,
        QIDS, KIDS, TOK, W, WREC, QBLK, KBLK, SPAN, NQB, NKB,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_D: tl.constexpr,
        DO_POOL: tl.constexpr, DO_REC: tl.constexpr, DO_TERMS: tl.constexpr, PACK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SQ: tl.constexpr, BLOCK_SK: tl.constexpr,
        CELLS_Q: tl.constexpr, HEADS_P: tl.constexpr,
        DO_TOKENS: tl.constexpr, DO_WREC: tl.constexpr, DO_SPANS: tl.constexpr, SPAN_Q: tl.constexpr,
        SPAN_K: tl.constexpr, SPAN_CELLS: tl.constexpr, SKIP_INTERIOR: tl.constexpr,
    ):
    # fmt: on
        # One program: BLOCK_M rows of PACK query heads sharing a key head (packed_rows).
        h, pos, row_in, m_start, m_stop = packed_rows(tl.program_id(0), tl.program_id(1), Lq, PACK, BLOCK_M)
        h0 = tl.program_id(1).to(tl.int64) * PACK
        nh = tl.num_programs(1).to(tl.int64) * PACK
        offs_d = tl.arange(0, BLOCK_D)
        q = tl.load(
            Q + h[:, None] * sq_h + pos[:, None] * sq_l + offs_d[None, :] * sq_d,
            mask=row_in[:, None] & (offs_d < D)[None, :],
            other=0.0,
        )
        lse2 = tl.load(LSE2 + h * Lq + pos, mask=row_in, other=float("inf"))
        k_base = K + (h0 // group) * sk_h
        # Pooled rows of this program: cell c = (head in pack) · BLOCK_SQ + (block - first block).
        # Block indices in int64 (position × size passes 2^31 at L = 128k); the first is the minimum.
        qb = ((pos + 1) * SQ - 1) // Lq
        qb0 = tl.min(qb, 0)
        onehot_q, cell_head, cell_bin, cell_in = _row_cells(h, h0, qb, qb0, row_in, SQ, PACK, BLOCK_SQ, CELLS_Q)
        # Received attention of a pack: column sums per head, by a one-hot product over heads.
        g = tl.arange(0, HEADS_P)
        onehot_h = ((h - h0)[:, None] == g[None, :]).to(tl.float32)
        prev = tl.zeros([BLOCK_M], tl.float32)
        same = tl.zeros([BLOCK_M], tl.float32)
        first = tl.zeros([BLOCK_M], tl.float32)
        dist = tl.zeros([BLOCK_M], tl.float32)
        dup = tl.zeros([BLOCK_M], tl.float32)
        dup_has = tl.zeros([BLOCK_M], tl.float32)
        ind = tl.zeros([BLOCK_M], tl.float32)
        ind_has = tl.zeros([BLOCK_M], tl.float32)
        if DO_TOKENS:  # token ranks (host side): >= 0; other = distinct negatives, never equal
            q_tok = tl.load(QIDS + pos, mask=row_in, other=-1)
        if DO_WREC:
            w = tl.load(W + h * Lq + pos, mask=row_in, other=0.0)
        if DO_SPANS:
            # Span cells of this program's rows, as the pooled cells above, when their block ids lie
            # within SPAN_Q of each other (spans of consecutive positions); else per-pair atomics.
            qs = tl.load(QBLK + pos, mask=row_in, other=-1)
            qs_in = qs >= 0
            qs0 = tl.min(tl.where(qs_in, qs, NQB), 0)
            qs_fit = (tl.max(tl.where(qs_in, qs, qs0), 0) - qs0) < SPAN_Q
            onehot_s, s_head, s_bin, s_in = _row_cells(h, h0, qs, qs0, qs_in, NQB, PACK, SPAN_Q, SPAN_CELLS)
        # fmt: off
        lo, hi = key_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, BLOCK_N, BLOCK_M,
                            CAUSAL, HAS_WINDOW, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        in_lo, in_hi = interior_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts, CAUSAL,
                                       HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, SKIP_INTERIOR)
        # fmt: on
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = (start_n + tl.arange(0, BLOCK_N)).to(tl.int64)
            key_in = offs_n < Lk
            k_ptrs = k_base + offs_n[:, None] * sk_l + offs_d[None, :] * sk_d
            # fmt: off
            t = tile_logits2(q, k_ptrs, pos, offs_n, h, offs_d, Lk, D, KV_VALID, scale, softcap, window, chunk,
                             chunk_shift, FACTS, n_facts, BIAS, bias_n, bias_origin, CAUSAL, HAS_WINDOW,
                             HAS_SOFTCAP, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS, HAS_BIAS, IEEE,
                             (start_n < in_lo) | (start_n + BLOCK_N > in_hi), SKIP_INTERIOR)
            # fmt: on
            p = tl.exp2(t - lse2[:, None])
            p = tl.where(row_in[:, None], p, 0.0)
            if DO_REC:
                if PACK == 1:
                    tl.atomic_add(REC + h0 * Lk + offs_n, tl.sum(p, 0), mask=key_in)
                else:
                    by_head = onehot_dot(p, tl.trans(onehot_h), True)  # [HEADS_P, BLOCK_N]
                    tl.atomic_add(
                        REC + (h0 + g)[:, None] * Lk + offs_n[None, :],
                        by_head,
                        mask=(g < PACK)[:, None] & key_in[None, :],
                    )
            if DO_POOL:
                kb = ((offs_n + 1) * SK - 1) // Lk
                kb0 = tl.min(kb, 0)
                _pool_tile(p, kb, key_in, kb0, onehot_q, cell_head, cell_bin, cell_in, POOL, SQ, SK, BLOCK_SK)
            if DO_TERMS:
                # int32 (positions < 2^31): an int64 [BLOCK_M, BLOCK_N] matrix doubles its registers.
                rel = pos.to(tl.int32)[:, None] - (start_n + tl.arange(0, BLOCK_N))[None, :]
                prev += tl.sum(tl.where(rel == 1, p, 0.0), 1)
                same += tl.sum(tl.where(rel == 0, p, 0.0), 1)
                first += tl.sum(tl.where(offs_n[None, :] == 0, p, 0.0), 1)
                dist += tl.sum(p * tl.abs(rel).to(tl.float32), 1)
            if DO_TOKENS:
                rel = pos.to(tl.int32)[:, None] - (start_n + tl.arange(0, BLOCK_N))[None, :]
                visible = t > float("-inf")
                k_tok = tl.load(KIDS + offs_n, mask=key_in, other=-2)
                k_before = tl.load(KIDS + offs_n - 1, mask=key_in & (offs_n >= 1), other=-3)
                is_dup = (k_tok[None, :] == q_tok[:, None]) & visible & (rel != 0)
                is_ind = (k_before[None, :] == q_tok[:, None]) & visible & (rel != -1)
                dup += tl.sum(tl.where(is_dup, p, 0.0), 1)
                ind += tl.sum(tl.where(is_ind, p, 0.0), 1)
                dup_has = tl.maximum(dup_has, tl.max(is_dup.to(tl.float32), 1))
                ind_has = tl.maximum(ind_has, tl.max(is_ind.to(tl.float32), 1))
            if DO_WREC:
                pw = p * w[:, None]
                if PACK == 1:
                    tl.atomic_add(WREC + h0 * Lk + offs_n, tl.sum(pw, 0), mask=key_in)
                else:  # weights are any reals: no one-hot product (onehot_dot takes [0, 1])
                    for j in tl.static_range(PACK):
                        col = tl.sum(tl.where((h - h0 == j)[:, None], pw, 0.0), 0)
                        tl.atomic_add(WREC + (h0 + j) * Lk + offs_n, col, mask=key_in)
            if DO_SPANS:
                ks = tl.load(KBLK + offs_n, mask=key_in, other=-1)
                ks_in = ks >= 0
                ks0 = tl.min(tl.where(ks_in, ks, NKB), 0)
                ks_fit = (tl.max(tl.where(ks_in, ks, ks0), 0) - ks0) < SPAN_K
                if qs_fit & ks_fit:
                    _pool_tile(p, ks, ks_in, ks0, onehot_s, s_head, s_bin, s_in, SPAN, NQB, NKB, SPAN_K)
                else:  # block ids scattered over the tile: one atomic per visible pair
                    tl.atomic_add(
                        SPAN + (h * NQB + qs)[:, None] * NKB + ks[None, :],
                        p,
                        mask=qs_in[:, None] & ks_in[None, :] & (p > 0),
                    )
        if DO_TOKENS:
            row = h * Lq + pos
            live = tl.where(lse2 < float("inf"), 1.0, 0.0)
            tl.store(TOK + row, dup, mask=row_in)
            tl.store(TOK + nh * Lq + row, dup_has * live, mask=row_in)
            tl.store(TOK + 2 * nh * Lq + row, ind, mask=row_in)
            tl.store(TOK + 3 * nh * Lq + row, ind_has * live, mask=row_in)
        if DO_TERMS:
            row = h * Lq + pos
            tl.store(TERMS + row, prev, mask=row_in)
            tl.store(TERMS + nh * Lq + row, same, mask=row_in)
            tl.store(TERMS + 2 * nh * Lq + row, first, mask=row_in)
            tl.store(TERMS + 3 * nh * Lq + row, dist, mask=row_in)


#: The fewest span blocks a program's rows (and a key tile) may touch on the one-hot path of
#: "span_sums"; more where the spans need it (`_span_cells`), up to the rows (keys) of a tile.
SPAN_CELLS_MIN = DOT_MIN


def _span_cells(ids: torch.Tensor, window: int, aligned: bool) -> int:
    """Power-of-two one-hot width (>= SPAN_CELLS_MIN, <= next_power_of_2(window)) holding the
    spread ``max - min`` of the block ids (-1 left out) of every `window` consecutive positions
    (`aligned`: windows starting at multiples of `window`, the key tiles); wider spreads take the
    kernel's per-pair atomics."""
    n = ids.shape[0]
    cap = max(SPAN_CELLS_MIN, triton.next_power_of_2(window))
    valid = ids >= 0
    if n == 0 or not bool(valid.any()):
        return SPAN_CELLS_MIN
    big = torch.iinfo(torch.int64).max
    hi_ids, lo_ids = torch.where(valid, ids, -1), torch.where(valid, ids, big)
    if aligned:
        pad = -n % window
        hi = torch.nn.functional.pad(hi_ids, (0, pad), value=-1).view(-1, window).amax(1)
        lo = torch.cat([lo_ids, lo_ids.new_full((pad,), big)]).view(-1, window).amin(1)
    else:
        w = min(window, n)
        hi, lo = hi_ids.unfold(0, w, 1).amax(1), lo_ids.unfold(0, w, 1).amin(1)
    spread = int(torch.where(hi >= 0, hi - lo, 0).max())
    return min(cap, max(SPAN_CELLS_MIN, triton.next_power_of_2(spread + 1)))


def _cells_per_tile(block: int, size: int, length: int) -> int:
    """Power-of-two bound on the pooled blocks `block` consecutive positions can touch (>= 16 for tl.dot)."""
    return max(
        DOT_MIN, min(triton.next_power_of_2(block), triton.next_power_of_2(-(-block * size // length) + 1))
    )


def digest_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    spec: MaskSpec,
    lse: torch.Tensor,
    pooled_size: tuple[int, int] | None = None,
    received: bool = False,
    terms: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
    pack_gqa: bool | None = None,
    *,
    token_ids: TokenIds | None = None,
    row_weights: torch.Tensor | None = None,
    blocks: Blocks | None = None,
) -> dict[str, torch.Tensor]:
    """One pass over P computing any of: "pooled" [Hq, sq, sk], "received" [Hq, Lk], "terms" [4, Hq, Lq],
    and the extras of `digest_torch` ("token_terms" [4, Hq, Lq], "weighted_received" [Hq, Lk],
    "span_sums" [Hq, n_q, n_k]), all float32.

    `pack_gqa` as in `rowstats.row_stats_triton`.
    """
    check_extras(q, k, terms, token_ids, row_weights, blocks)
    hq, lq, d = q.shape
    lk = k.shape[1]
    group = hq // k.shape[0]

    def run(block_m: int, block_n: int, options: dict) -> dict[str, torch.Tensor]:
        pack = gqa_pack(group, lq, block_m, pack_gqa)
        dev = q.device
        dummy = torch.empty(1, dtype=torch.float32, device=dev)
        sq, sk = pooled_size if pooled_size is not None else (1, 1)
        pool = torch.zeros(hq, sq, sk, dtype=torch.float32, device=dev) if pooled_size is not None else dummy
        rec = torch.zeros(hq, lk, dtype=torch.float32, device=dev) if received else dummy
        row_terms = new_output(4, hq, lq, device=dev) if terms else dummy
        block_sq = _cells_per_tile(-(-block_m // pack) + 1, sq, lq)
        q_ids = k_ids = tok = weights = wrec = q_blk = k_blk = span = dummy
        if token_ids is not None:  # ranks in int32: one id space for queries and keys
            both = torch.cat([t.reshape(-1).to(dev) for t in token_ids])
            ranks = torch.unique(both, return_inverse=True)[1]
            q_ids, k_ids = ranks[:lq].to(torch.int32).contiguous(), ranks[lq:].to(torch.int32).contiguous()
            tok = new_output(4, hq, lq, device=dev)
        if row_weights is not None:
            weights = row_weights.to(device=dev, dtype=torch.float32).contiguous()
            wrec = torch.zeros(hq, lk, dtype=torch.float32, device=dev)
        n_qb, n_kb = (blocks[2], blocks[3]) if blocks is not None else (1, 1)
        if blocks is not None:
            q_blk, k_blk = (b.to(device=dev, dtype=torch.int32).contiguous() for b in blocks[:2])
            span = torch.zeros(hq, n_qb, n_kb, dtype=torch.float32, device=dev)
            # A program's rows: block_m aligned positions, or up to block_m / pack + 1 when packed.
            span_q = _span_cells(
                blocks[0].to(dev), block_m if pack == 1 else -(-block_m // pack) + 1, pack == 1
            )
            span_k = _span_cells(blocks[1].to(dev), block_n, aligned=True)
        else:
            span_q = span_k = SPAN_CELLS_MIN
        launch(
            _digest_kernel,
            (triton.cdiv(pack * lq, block_m), hq // pack),
            q,
            k,
            spec,
            safe_lse2(lse),
            pool,
            rec,
            row_terms,
            lq,
            lk,
            group,
            sq,
            sk,
            q_ids,
            k_ids,
            tok,
            weights,
            wrec,
            q_blk,
            k_blk,
            span,
            n_qb,
            n_kb,
            DO_POOL=pooled_size is not None,
            DO_REC=received,
            DO_TERMS=terms,
            PACK=pack,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_SQ=block_sq,
            BLOCK_SK=_cells_per_tile(block_n, sk, lk),
            CELLS_Q=triton.next_power_of_2(pack * block_sq),
            HEADS_P=max(DOT_MIN, triton.next_power_of_2(pack)),
            DO_TOKENS=token_ids is not None,
            DO_WREC=row_weights is not None,
            DO_SPANS=blocks is not None,
            SPAN_Q=span_q,
            SPAN_K=span_k,
            SPAN_CELLS=triton.next_power_of_2(pack * span_q),
            **options,
        )
        out = {}
        if pooled_size is not None:
            out["pooled"] = finish_blocks(pool, lq, sq)
        if received:
            out["received"] = rec
        if terms:
            out["terms"] = row_terms
        if token_ids is not None:
            out["token_terms"] = tok
        if row_weights is not None:
            out["weighted_received"] = wrec
        if blocks is not None:
            out["span_sums"] = span
        return out

    shape = (hq, k.shape[0], lq, lk, d, str(q.dtype), pack_gqa, pooled_size, received, terms)
    extras = (token_ids is not None, row_weights is not None, blocks is not None)
    return tuned_loop_launch("digest", (*shape, *extras), d, q.dtype, block_m, block_n, run, digest_config)
