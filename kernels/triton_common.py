"""What every Triton kernel family shares: the guarded import, the masked base-2 logits tile, and
one launch helper (`launch`) that passes Q, K and the arguments describing a `MaskSpec`.

Numerics (written once, used by every kernel):

* Q and K tiles are loaded in their storage dtype and multiplied with fp32 accumulation; fp32
  inputs use IEEE fp32 products (``input_precision="ieee"``), never TF32, so a kernel matches the
  torch backend instead of drifting by TF32's 10-bit mantissa.
* Logits are kept in base 2: ``t = s · log2(e)`` with ``s`` the natural logit (scaled, then
  soft-capped as ``c · tanh(s / c)``, then plus the relative position bias, which `mask_args`
  hands over already × log2(e) and the kernels gather per pair: no L×L bias). Probabilities
  are ``exp2(t - lse2)`` with ``lse2`` the row's base-2 log-sum-exp; the stored statistic is
  the natural ``lse = lse2 · ln 2``.
* Visibility (`visible_pairs`) and each row block's key range (`key_bounds`) follow
  `MaskSpec.allowed` and `MaskSpec.key_range`: causal, window, chunk, bidirectional groups,
  packed-sequence segments and key padding, each behind a constexpr flag, so a kernel without a
  fact compiles as before. Invisible (query, key) pairs have ``t = -inf``.
* Empty rows (``lse = -inf``) give zeros: the kernels substitute ``+inf`` for their ``lse`` so
  ``exp2(-inf - inf) = 0``, never NaN.
* Offsets into Q, K and outputs are computed in int64, so L = 128k × D = 256 and beyond is safe.
"""

from __future__ import annotations

import math

import torch

from .masking import MaskSpec

try:  # Triton is optional: CPU-only installs (macOS, Windows) use the torch backend.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAS_TRITON = False

#: log2(e): base-2 logits are t = s · LOG2E. ln 2: natural units again, lse = lse2 · LN2.
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
#: The smallest extent of a tl.dot operand: tile widths and one-hot widths are at least this.
DOT_MIN = 16


#: Rows of the position-facts table `mask_args` hands the kernels ([FACT_ROWS, L] int32): each
#: position's segment id and its segment's [first, stop), then its group id and group's [first, stop).
SEG, SEG_LO, SEG_HI, GROUP, GROUP_LO, GROUP_HI = range(6)
FACT_ROWS = 6
#: The runtime mask arguments after ``D`` in every kernel's signature, in order (`launch`).
MASK_SCALARS = (
    *("scale", "softcap", "window", "chunk", "chunk_shift"),
    *("facts", "n_facts", "bias", "bias_n", "bias_origin"),
)


def mask_args(spec: MaskSpec, device: torch.device) -> dict:
    """Kernel arguments and constexpr flags describing `spec`, for one sequence (batch 1).

    * ``chunk``, ``chunk_shift``: position ``p`` lies in chunk ``(p + chunk_shift) // chunk``, with
      ``chunk_shift = -chunk_start mod chunk`` (non-negative, so integer division is a floor).
    * ``facts`` [FACT_ROWS, n_facts] int32: segment and group ids with their extents
      (`MaskSpec._segment_reach`, `_group_reach`), rows as `SEG` ... `GROUP_HI`; self-attention only,
      so ``n_facts`` is the sequence length.
    * ``bias`` [Hq, bias_n] float32: the relative-position bias in base-2 units (× log2 e); the
      pair (q, k) of query head h reads ``bias[h, k - q + bias_origin]`` (`bias2`).
    """
    padding = spec.key_padding
    per_item = {"key padding": padding, "segments": spec.segments, "groups": spec.groups}
    per_item["chunk starts"] = None if spec.chunk_start is None else spec.chunk_start.reshape(-1, 1)
    for what, t in per_item.items():
        if t is not None and t.shape[0] != 1:
            raise ValueError(f"kernels take one sequence at a time; {what} have batch {t.shape[0]}")
    chunk = int(spec.chunk or 0)
    origin = 0 if spec.chunk_start is None else int(spec.chunk_start.reshape(-1)[0])
    facts, n_facts = _position_facts(spec, device)
    bias = torch.zeros(1, dtype=torch.float32, device=device)
    if spec.bias is not None:
        bias = (spec.bias.to(device=device, dtype=torch.float64) * LOG2E).to(torch.float32).contiguous()
    return {
        "scale": spec.scaling if spec.softcap is not None else spec.scaling * LOG2E,
        "softcap": float(spec.softcap or 1.0),
        "window": int(spec.window or 0),
        "chunk": chunk,
        "chunk_shift": (-origin) % chunk if chunk else 0,
        "facts": facts,
        "n_facts": n_facts,
        "bias": bias,
        "bias_n": bias.shape[-1] if spec.bias is not None else 0,
        "bias_origin": int(spec.bias_origin),
        "kv_valid": (
            padding[0].to(device=device, dtype=torch.int8)
            if padding is not None
            else torch.empty(1, dtype=torch.int8, device=device)
        ),
        "CAUSAL": bool(spec.causal),
        "HAS_WINDOW": spec.window is not None,
        "HAS_SOFTCAP": spec.softcap is not None,
        "HAS_PADDING": padding is not None,
        "HAS_CHUNK": spec.chunk is not None,
        "HAS_SEGMENTS": spec.segments is not None,
        "HAS_GROUPS": spec.groups is not None,
        "HAS_BIAS": spec.bias is not None,
    }


def _position_facts(spec: MaskSpec, device: torch.device) -> tuple[torch.Tensor, int]:
    """(facts [FACT_ROWS, L] int32, L) of `mask_args`; a 1-element stand-in and 0 without segments
    or groups. Ids become their ranks (groups: 1, 2, ... with 0 kept for "no group"), so that
    int32 holds them (positions < 2^31)."""
    per_position = [(SEG, spec.segments, "_segment_reach"), (GROUP, spec.groups, "_group_reach")]
    present = [(row, ids) for row, ids, _ in per_position if ids is not None]
    if not present:
        return torch.zeros(1, dtype=torch.int32, device=device), 0
    n = present[0][1].shape[1]
    facts = torch.zeros(FACT_ROWS, n, dtype=torch.int64)
    for row, ids, reach in per_position:
        if ids is not None:
            ranks = torch.unique(ids[0].cpu(), return_inverse=True)[1]
            if row == GROUP:
                ranks = torch.where(ids[0].cpu() == 0, 0, ranks + 1)
            lo, hi = getattr(spec, reach)
            facts[row : row + 3] = torch.stack([ranks, lo[0].cpu(), hi[0].cpu()])
    return facts.to(device=device, dtype=torch.int32), n


#: Tests set this to fill kernel outputs with NaN before a launch, so an element a kernel forgets
#: to write fails the comparison instead of passing by luck.
POISON_OUTPUTS = False


def new_output(*shape: int, device: torch.device) -> torch.Tensor:
    """A float32 output buffer every element of which the kernel must write."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)


def block_d(head_dim: int) -> int:
    return max(DOT_MIN, triton.next_power_of_2(head_dim))


def launch(kernel, grid, q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, *operands, **constexprs) -> None:
    """Launch `kernel` on `grid` with the parameters every kernel family shares.

    A kernel's signature opens with ``Q, K, KV_VALID``, the strides of Q and of K (as many as
    their ranks: a head's Q [L, D] has two, a single query row one), ``D``, the mask arguments
    `MASK_SCALARS` (``scale, softcap, window, chunk, chunk_shift, FACTS, n_facts, BIAS, bias_n,
    bias_origin``: `mask_args`), then takes its own `operands` (buffers, sizes), and has the
    constexprs ``CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS,
    HAS_GROUPS, HAS_BIAS`` (`mask_args`), ``IEEE`` (fp32 inputs: IEEE products, see the module
    docstring) and ``BLOCK_D``; `constexprs` holds its own constexprs and the launch options
    (``num_warps``, ``num_stages``). The bias rows are the query heads the kernel indexes: a
    kernel over one head takes ``spec.for_heads([head])``.
    """
    args = mask_args(spec, q.device)
    if args["n_facts"] and args["n_facts"] != k.shape[-2]:
        raise ValueError(
            f"segments and groups are per position of a self-attention call: {args['n_facts']} "
            f"positions, but {k.shape[-2]} keys"
        )
    d = q.shape[-1]
    kernel[grid](
        q,
        k,
        args.pop("kv_valid"),
        *q.stride(),
        *k.stride(),
        d,
        *(args.pop(name) for name in MASK_SCALARS),
        *operands,
        **args,
        IEEE=q.dtype == torch.float32,
        BLOCK_D=block_d(d),
        **constexprs,
    )


def gqa_pack(group: int, lq: int, block_m: int, requested: bool | None = None) -> int:
    """Query heads per program: the whole group of heads sharing a key head, or 1.

    Each program reads its rows' key range once, so packing a group saves K traffic only where
    it saves programs: when a head's rows leave its last row block partly empty (short inputs,
    few decoder queries). For long sequences the K reads per row are the same either way, and
    unpacked programs keep one head per program. None: pack when it cuts programs by >= 1/8.
    """
    if requested is not None:
        return group if requested else 1
    packed = -(-group * lq // block_m)
    unpacked = group * -(-lq // block_m)
    return group if group > 1 and 8 * packed <= 7 * unpacked else 1


def one_head(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, head: int):
    """Launch operands of query head `head`: its Q [Lq, D], the K [Lk, D] of the key head it reads
    (head // group under grouped-query attention) and its base-2 row log-sum-exp (`safe_lse2`)."""
    return q[head], k[head // (q.shape[0] // k.shape[0])], safe_lse2(lse[head])


def safe_lse2(lse: torch.Tensor) -> torch.Tensor:
    """Base-2 row log-sum-exp as float32 with empty rows (-inf) turned into +inf (-> zero probs)."""
    lse2 = lse.float() * LOG2E
    return torch.where(torch.isneginf(lse2), torch.full_like(lse2, float("inf")), lse2).contiguous()


if HAS_TRITON:
    # The constants above as kernel code may read them (a @triton.jit function reads only
    # constexpr globals).
    LOG2E_C = tl.constexpr(LOG2E)
    LN2_C = tl.constexpr(LN2)
    SEG_C, SEG_LO_C, SEG_HI_C = tl.constexpr(SEG), tl.constexpr(SEG_LO), tl.constexpr(SEG_HI)
    GROUP_C, GROUP_LO_C, GROUP_HI_C = tl.constexpr(GROUP), tl.constexpr(GROUP_LO), tl.constexpr(GROUP_HI)
    #: onehot_dot's scale, 2^14 (see there).
    _ONEHOT_SCALE = tl.constexpr(16384.0)

    @triton.jit
    def logits2(raw, scale, softcap, HAS_SOFTCAP: tl.constexpr):
        """Base-2 logits from raw q·k (``scale`` already holds log2(e) unless soft-capping)."""
        if HAS_SOFTCAP:
            x = raw * scale / softcap
            # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at ±inf, no libdevice needed.
            return softcap * (1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)) * LOG2E_C
        return raw * scale

    @triton.jit
    def visible_pairs(
        q_pos,
        k_pos,
        key_in,
        kv_valid_ptr,
        kv_index,
        window,
        chunk,
        chunk_shift,
        facts_ptr,
        n_facts,
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
        HAS_PADDING: tl.constexpr,
        HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr,
    ):
        """Broadcast visibility of (query position, key position) pairs; `MaskSpec.allowed` in Triton:
        ``(causal & window & chunk) | same group``, then ``& same segment & key padding``.
        `key_in` says a key position is in range; segment and group ids are read from `facts_ptr`
        (`mask_args`) for queries in [0, n_facts) and keys in range."""
        q_ok = q_pos >= 0
        visible = key_in & q_ok
        if CAUSAL:
            visible = visible & (k_pos <= q_pos)
        if HAS_WINDOW:
            diff = q_pos - k_pos
            if CAUSAL:
                visible = visible & (diff < window)
            else:
                visible = visible & (diff < window) & (diff > -window)
        if HAS_CHUNK:  # the keys of the query's chunk, [first, first + chunk): one int32 remainder per row
            first = q_pos - ((q_pos + chunk_shift).to(tl.int32) % chunk)
            visible = visible & (k_pos >= first) & (k_pos < first + chunk)
        q_fact = q_ok & (q_pos < n_facts)
        if HAS_GROUPS:  # int32 offsets (FACT_ROWS · L < 2^31): no int64 address per key to keep
            groups = facts_ptr + GROUP_C * n_facts
            g_q = tl.load(groups + q_pos.to(tl.int32), mask=q_fact, other=0)
            g_k = tl.load(groups + k_pos.to(tl.int32), mask=key_in, other=0)
            visible = visible | ((g_q == g_k) & (g_q != 0) & key_in & q_fact)
        if HAS_SEGMENTS:  # segments are contiguous: the keys of the query's segment, two loads per row
            s_lo = tl.load(facts_ptr + SEG_LO_C * n_facts + q_pos, mask=q_fact, other=0)
            s_hi = tl.load(facts_ptr + SEG_HI_C * n_facts + q_pos, mask=q_fact, other=0)
            visible = visible & (k_pos >= s_lo) & (k_pos < s_hi)
        if HAS_PADDING:
            visible = visible & (tl.load(kv_valid_ptr + kv_index, mask=key_in, other=0) != 0)
        return visible

    @triton.jit
    def bias2(bias_ptr, head, q_pos, k_pos, bias_n, bias_origin):
        """The base-2 bias ``bias[head, k - q + bias_origin]`` of (query, key) pairs, 0 where the
        offset is off the table (pairs a kernel masks anyway: keys or rows out of range)."""
        offset = (k_pos - q_pos).to(tl.int32) + bias_origin  # int32: positions and the table < 2^31
        inside = (offset >= 0) & (offset < bias_n)
        return tl.load(bias_ptr + (head * bias_n).to(tl.int32) + offset, mask=inside, other=0.0)

    @triton.jit
    def tile_logits2(
        q,  # [BLOCK_M, BLOCK_D] query tile
        k_ptrs,  # pointers of a [BLOCK_N, BLOCK_D] key tile
        offs_m,  # [BLOCK_M] int64 query positions
        offs_n,  # [BLOCK_N] int64 key positions
        q_head,  # [BLOCK_M] int64 query head of each row (its bias row)
        offs_d,
        Lk,
        D,
        kv_valid_ptr,
        scale,
        softcap,
        window,
        chunk,
        chunk_shift,
        facts_ptr,
        n_facts,
        bias_ptr,
        bias_n,
        bias_origin,
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr,
        HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        IEEE: tl.constexpr,
        edge,  # scalar: the tile is not inside `interior_bounds` (always true unless SKIP_INTERIOR)
        SKIP_INTERIOR: tl.constexpr,
    ):
        """Masked base-2 logits [BLOCK_M, BLOCK_N] of one tile; invisible pairs are -inf.

        SKIP_INTERIOR (an autotune option, `loop_space`): tiles every pair of which is visible
        (not `edge`) skip the visibility test, as FlashAttention's EVEN_M / EVEN_N and its
        off-diagonal blocks do; the values are the same."""
        key_in = offs_n < Lk
        k = tl.load(k_ptrs, mask=key_in[:, None] & (offs_d < D)[None, :], other=0.0)
        if IEEE:
            raw = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            raw = tl.dot(q, tl.trans(k))
        t = logits2(raw, scale, softcap, HAS_SOFTCAP)
        if HAS_BIAS:
            t = t + bias2(bias_ptr, q_head[:, None], offs_m[:, None], offs_n[None, :], bias_n, bias_origin)
        # fmt: off
        if SKIP_INTERIOR:
            if edge:
                t = _masked(t, offs_m, offs_n, key_in, kv_valid_ptr, window, chunk, chunk_shift, facts_ptr,
                            n_facts, CAUSAL, HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        else:
            t = _masked(t, offs_m, offs_n, key_in, kv_valid_ptr, window, chunk, chunk_shift, facts_ptr, n_facts,
                        CAUSAL, HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        # fmt: on
        return t

    # fmt: off
    @triton.jit
    def _masked(
        t, offs_m, offs_n, key_in, kv_valid_ptr, window, chunk, chunk_shift, facts_ptr, n_facts,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr, HAS_GROUPS: tl.constexpr,
    ):
    # fmt: on
        """`t` with the pairs `visible_pairs` hides set to -inf."""
        # fmt: off
        visible = visible_pairs(
            offs_m[:, None], offs_n[None, :], key_in[None, :], kv_valid_ptr, offs_n[None, :], window, chunk,
            chunk_shift, facts_ptr, n_facts, CAUSAL, HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS,
            HAS_GROUPS,
        )
        # fmt: on
        return tl.where(visible, t, float("-inf"))

    # fmt: off
    @triton.jit
    def interior_bounds(
        m_start, m_stop, Lk, window, chunk, chunk_shift, facts_ptr, n_facts,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr, SKIP_INTERIOR: tl.constexpr,
    ):
    # fmt: on
        """[lo, hi) of the keys that every query of [m_start, m_stop) sees: a key tile inside
        needs no visibility test (`tile_logits2`). Empty without SKIP_INTERIOR or with key padding
        (a per-key fact). Groups only add visible pairs, so they leave the range as it is; the
        rows' segments are contiguous, so all rows see the keys of both the first row's and the
        last row's segment."""
        lo = 0
        hi = 0
        if SKIP_INTERIOR:
            hi = Lk
            if CAUSAL:  # k <= q for the first row
                hi = tl.minimum(hi, m_start + 1)
            if HAS_WINDOW:  # |q - k| < window for the last row (and, bidirectional, the first)
                lo = tl.maximum(lo, m_stop - window)
                if not CAUSAL:
                    hi = tl.minimum(hi, m_start + window)
            if HAS_CHUNK:  # from the last row's chunk start to the first row's chunk end
                lo = tl.maximum(lo, m_stop - 1 - ((m_stop - 1 + chunk_shift).to(tl.int32) % chunk))
                hi = tl.minimum(hi, m_start - ((m_start + chunk_shift).to(tl.int32) % chunk) + chunk)
            if HAS_SEGMENTS:
                lo = tl.maximum(lo, tl.load(facts_ptr + SEG_LO_C * n_facts + m_stop - 1))
                hi = tl.minimum(hi, tl.load(facts_ptr + SEG_HI_C * n_facts + m_start))
            if HAS_PADDING:
                hi = lo
        return lo, hi

    @triton.jit
    def onehot_dot(a, onehot, A_IS_ONEHOT: tl.constexpr):
        """a @ onehot (or onehot @ a when A_IS_ONEHOT) for fp32 values a in [0, 1] (probabilities and
        their sums within a row) and a 0/1 matrix, to fp32 accuracy on tensor cores.

        An fp32 dot would take Triton's FMA path (``ieee``), which on Hopper holds its operands
        in registers and spills; tf32 would round a to 10 bits. Instead a · 2^14 is cut into
        three fp16 pieces (11 bits each; the scale keeps a = 1 below fp16's 65504 and the pieces
        of any a above 2^-28 clear of fp16's subnormals), each product with a 0/1 matrix is
        exact, and the fp32 accumulation adds them back: 33 bits >= fp32's 24.
        """
        x = a * _ONEHOT_SCALE
        hi = x.to(tl.float16)
        rest = x - hi.to(tl.float32)
        mid = rest.to(tl.float16)
        lo = (rest - mid.to(tl.float32)).to(tl.float16)
        oh = onehot.to(tl.float16)
        if A_IS_ONEHOT:
            acc = tl.dot(oh, hi, out_dtype=tl.float32)
            acc = tl.dot(oh, mid, acc, out_dtype=tl.float32)
            acc = tl.dot(oh, lo, acc, out_dtype=tl.float32)
        else:
            acc = tl.dot(hi, oh, out_dtype=tl.float32)
            acc = tl.dot(mid, oh, acc, out_dtype=tl.float32)
            acc = tl.dot(lo, oh, acc, out_dtype=tl.float32)
        return acc * (1.0 / _ONEHOT_SCALE)

    @triton.jit
    def packed_rows(pid_m, pid_h, Lq, PACK: tl.constexpr, BLOCK_M: tl.constexpr):
        """Rows of one program over PACK query heads that share a key head (PACK = 1: one head).

        Packed row r is position r // PACK of head pid_h·PACK + r % PACK: position-major, so a
        block spans BLOCK_M / PACK positions and its causal / window key range stays tight.
        Returns (head [BLOCK_M], position [BLOCK_M], row in range, first position, stop position).
        """
        r = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        pos = r // PACK
        h = pid_h.to(tl.int64) * PACK + r % PACK
        m_start = (pid_m * BLOCK_M) // PACK
        m_stop = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // PACK + 1, Lq)
        return h, pos, pos < Lq, m_start, m_stop

    @triton.jit
    def key_bounds(
        m_start,
        m_stop,
        Lk,
        window,
        chunk,
        chunk_shift,
        facts_ptr,
        n_facts,
        BLOCK_N: tl.constexpr,
        ROWS: tl.constexpr,
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
        HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr,
    ):
        """[lo, hi) of key positions that queries [m_start, m_stop) can see, lo aligned to BLOCK_N;
        `MaskSpec.key_range` in Triton. ROWS >= m_stop - m_start (the groups' extents of the rows
        are reduced over a vector of ROWS positions)."""
        lo = 0
        hi = Lk
        if CAUSAL:
            hi = tl.minimum(hi, m_stop)
        if HAS_WINDOW:
            lo = tl.maximum(0, m_start - window + 1)
            if not CAUSAL:
                hi = tl.minimum(hi, m_stop + window - 1)
        if HAS_CHUNK:  # from the chunk of m_start to the end of the chunk of m_stop - 1
            lo = tl.maximum(lo, tl.maximum(((m_start + chunk_shift) // chunk) * chunk - chunk_shift, 0))
            if not CAUSAL:
                hi = tl.minimum(hi, ((m_stop - 1 + chunk_shift) // chunk + 1) * chunk - chunk_shift)
        if HAS_GROUPS:  # a group's keys may lie before a window or chunk, or after the query
            rows = m_start + tl.arange(0, ROWS)
            row_in = rows < m_stop
            first = tl.load(facts_ptr + GROUP_LO_C * n_facts + rows, mask=row_in, other=n_facts)
            stop = tl.load(facts_ptr + GROUP_HI_C * n_facts + rows, mask=row_in, other=0)
            lo = tl.minimum(lo, tl.min(first, 0))
            hi = tl.maximum(hi, tl.minimum(Lk, tl.max(stop, 0)))
        if HAS_SEGMENTS:  # nothing outside the segments of the first and last rows
            lo = tl.maximum(lo, tl.load(facts_ptr + SEG_LO_C * n_facts + m_start))
            hi = tl.minimum(hi, tl.load(facts_ptr + SEG_HI_C * n_facts + m_stop - 1))
        lo = (lo // BLOCK_N) * BLOCK_N
        return lo, hi
else:  # pragma: no cover
    tile_logits2 = key_bounds = logits2 = visible_pairs = bias2 = packed_rows = onehot_dot = None
    interior_bounds = None
    LOG2E_C = LN2_C = None
