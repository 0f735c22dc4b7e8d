"""What every Triton kernel family shares: the guarded import, the masked base-2 logits tile, and
one launch helper (`launch`) that passes Q, K and the arguments describing a `MaskSpec`.

Numerics (written once, used by every kernel):

* Q and K tiles are loaded in their storage dtype and multiplied with fp32 accumulation; fp32
  inputs use IEEE fp32 products (``input_precision="ieee"``), never TF32, so a kernel matches the
  torch backend instead of drifting by TF32's 10-bit mantissa.
* Logits are kept in base 2: ``t = s · log2(e)`` with ``s`` the natural logit (scaled, then
  soft-capped as ``c · tanh(s / c)``). Probabilities are ``exp2(t - lse2)`` with ``lse2`` the row's
  base-2 log-sum-exp; the stored statistic is the natural ``lse = lse2 · ln 2``.
* Invisible (query, key) pairs have ``t = -inf``. Empty rows (``lse = -inf``) give zeros: the
  kernels substitute ``+inf`` for their ``lse`` so ``exp2(-inf - inf) = 0``, never NaN.
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


def mask_args(spec: MaskSpec, device: torch.device) -> dict:
    """Kernel arguments and constexpr flags describing `spec` (key padding of a single sequence)."""
    padding = spec.key_padding
    if padding is not None and padding.shape[0] != 1:
        raise ValueError(f"kernels take one sequence at a time; key padding has batch {padding.shape[0]}")
    return {
        "scale": spec.scaling if spec.softcap is not None else spec.scaling * LOG2E,
        "softcap": float(spec.softcap or 1.0),
        "window": int(spec.window or 0),
        "kv_valid": (
            padding[0].to(device=device, dtype=torch.int8)
            if padding is not None
            else torch.empty(1, dtype=torch.int8, device=device)
        ),
        "CAUSAL": bool(spec.causal),
        "HAS_WINDOW": spec.window is not None,
        "HAS_SOFTCAP": spec.softcap is not None,
        "HAS_PADDING": padding is not None,
    }


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
    their ranks: a head's Q [L, D] has two, a single query row one), ``D, scale, softcap, window``,
    then takes its own `operands` (buffers, sizes), and has the constexprs ``CAUSAL, HAS_WINDOW,
    HAS_SOFTCAP, HAS_PADDING`` (`mask_args`), ``IEEE`` (fp32 inputs: IEEE products, see the
    module docstring) and ``BLOCK_D``; `constexprs` holds its own constexprs and the launch
    options (``num_warps``, ``num_stages``).
    """
    args = mask_args(spec, q.device)
    d = q.shape[-1]
    kernel[grid](
        q,
        k,
        args.pop("kv_valid"),
        *q.stride(),
        *k.stride(),
        d,
        args.pop("scale"),
        args.pop("softcap"),
        args.pop("window"),
        *operands,
        **args,
        IEEE=q.dtype == torch.float32,
        BLOCK_D=block_d(d),
        **constexprs,
    )


def loop_config(
    head_dim: int, dtype: torch.dtype, block_m: int | None = None, block_n: int | None = None
) -> tuple[int, int, dict]:
    """(block_m, block_n, launch options) for the kernels that loop over key blocks; a block size
    passed in (the tests' small tiles) wins over the default.

    Chosen from what the compiler reports for sm_90 (`python -m benchmarks.compiled`), not yet
    from GPU timings:

    * fp16/bf16: 64 × 64 blocks on tensor cores; two pipeline stages from d = 256 (512-byte K
      rows) so shared memory stays <= 144 KiB; 8 warps from d = 128 so the Q tile stays in
      registers.
    * fp32 (IEEE products on Triton's FMA path, which holds whole Q and K tiles in registers):
      64 × 64 blocks spill (5 KB of stack per thread at d = 128); 32 × 32 blocks up to d = 64 and
      16 × 32 beyond compile without spills in every kernel (rows, digest, tiles).
    """
    width = block_d(head_dim)
    row_bytes = width * dtype.itemsize
    if dtype == torch.float32:
        default_m, default_n = (32 if width <= 64 else 16), 32
    else:
        default_m, default_n = 64, 64
    launch = {"num_stages": 2 if row_bytes >= 512 else 3, "num_warps": 8 if width >= 128 else 4}
    return block_m or default_m, block_n or default_n, launch


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
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
        HAS_PADDING: tl.constexpr,
    ):
        """Broadcast visibility of (query position, key position) pairs; `MaskSpec.allowed` in Triton."""
        visible = key_in & (q_pos >= 0)
        if CAUSAL:
            visible = visible & (k_pos <= q_pos)
        if HAS_WINDOW:
            diff = q_pos - k_pos
            if CAUSAL:
                visible = visible & (diff < window)
            else:
                visible = visible & (diff < window) & (diff > -window)
        if HAS_PADDING:
            visible = visible & (tl.load(kv_valid_ptr + kv_index, mask=key_in, other=0) != 0)
        return visible

    @triton.jit
    def tile_logits2(
        q,  # [BLOCK_M, BLOCK_D] query tile
        k_ptrs,  # pointers of a [BLOCK_N, BLOCK_D] key tile
        offs_m,  # [BLOCK_M] int64 query positions
        offs_n,  # [BLOCK_N] int64 key positions
        offs_d,
        Lk,
        D,
        kv_valid_ptr,
        scale,
        softcap,
        window,
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
        HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """Masked base-2 logits [BLOCK_M, BLOCK_N] of one tile; invisible pairs are -inf."""
        key_in = offs_n < Lk
        k = tl.load(k_ptrs, mask=key_in[:, None] & (offs_d < D)[None, :], other=0.0)
        if IEEE:
            raw = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            raw = tl.dot(q, tl.trans(k))
        t = logits2(raw, scale, softcap, HAS_SOFTCAP)
        visible = visible_pairs(
            offs_m[:, None],
            offs_n[None, :],
            key_in[None, :],
            kv_valid_ptr,
            offs_n[None, :],
            window,
            CAUSAL,
            HAS_WINDOW,
            HAS_PADDING,
        )
        return tl.where(visible, t, float("-inf"))

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
        BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr,
        HAS_WINDOW: tl.constexpr,
    ):
        """[lo, hi) of key positions that queries [m_start, m_stop) can see, lo aligned to BLOCK_N."""
        lo = 0
        hi = Lk
        if CAUSAL:
            hi = tl.minimum(hi, m_stop)
        if HAS_WINDOW:
            lo = tl.maximum(0, m_start - window + 1)
            if not CAUSAL:
                hi = tl.minimum(hi, m_stop + window - 1)
        lo = (lo // BLOCK_N) * BLOCK_N
        return lo, hi
else:  # pragma: no cover
    tile_logits2 = key_bounds = logits2 = visible_pairs = packed_rows = onehot_dot = None
    LOG2E_C = LN2_C = None
