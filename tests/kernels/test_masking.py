"""The mask description (kernels/masking.py), used alike by the torch twins and the kernels.

Torch: `MaskSpec.allowed` and `key_range` against the dense loops of tests/reference.py, the
spec's checks, and `for_heads`. Triton (interpreted on the CPU) and CUDA: `triton_common.
visible_pairs`, the kernels' form of `allowed`, against the same loops.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import MaskSpec, triton_common
from attnscope.kernels.triton_common import tl, triton, visible_pairs

from reference import DEVICE, MASKS, dense_visible, random_case

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


def _dense(spec: MaskSpec, lq: int, lk: int) -> torch.Tensor:
    key_real = None if spec.key_padding is None else spec.key_padding[0].cpu()
    return dense_visible(lq, lk, spec.causal, spec.window, key_real)


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("lengths", [(37, 37), (23, 41)])
def test_allowed_and_key_range_match_the_dense_mask(mask, lengths, rng):
    lq, lk = lengths
    _, _, spec, _, _ = random_case(rng, MASKS[mask], torch.float32, lq=lq, lk=lk)
    dense = _dense(spec, lq, lk)
    allowed = spec.allowed(torch.arange(lq), torch.arange(lk))
    assert torch.equal(dense, torch.ones(lq, lk, dtype=torch.bool) if allowed is None else allowed)
    for q0, q1 in ((0, lq), (5, 9), (lq - 1, lq)):
        lo, hi = spec.key_range(q0, q1, lk)
        visible_keys = dense[q0:q1].any(0).nonzero().flatten()
        assert all(lo <= int(key) < hi for key in visible_keys), (
            f"rows {q0}:{q1} see keys outside [{lo}, {hi})"
        )


def test_spec_checks_its_facts():
    with pytest.raises(ValueError, match="sliding window must be >= 1 key, got 0"):
        MaskSpec(scaling=1.0, window=0)
    with pytest.raises(ValueError, match="softcap must be > 0, got -1"):
        MaskSpec(scaling=1.0, softcap=-1.0)


def test_for_heads_takes_the_chosen_heads_sinks():
    sinks = torch.tensor([0.5, -1.0, 2.0, 3.0])
    spec = MaskSpec(scaling=0.3, causal=True, window=4, sinks=sinks)
    chosen = spec.for_heads([3, 1, 1])
    assert torch.equal(chosen.sinks, torch.tensor([3.0, -1.0, -1.0]))
    assert (chosen.scaling, chosen.causal, chosen.window) == (0.3, True, 4)
    plain = MaskSpec(scaling=0.3)
    assert plain.for_heads([0]) is plain
    with pytest.raises(ValueError, match=r"query heads must be in \[0, 4\), got \[4\]"):
        spec.for_heads([0, 4])


# ---- Triton (interpreted on the CPU) and CUDA ----------------------------------------------------
if triton_common.HAS_TRITON:

    @triton.jit
    def _visible_kernel(
        KV_VALID, OUT, Lq, Lk, window, chunk, chunk_shift, FACTS, n_facts,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
        HAS_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
        key_in = offs_n < Lk
        # fmt: off
        visible = visible_pairs(offs_m[:, None], offs_n[None, :], key_in[None, :], KV_VALID, offs_n[None, :],
                                window, chunk, chunk_shift, FACTS, n_facts, CAUSAL, HAS_WINDOW, HAS_PADDING,
                                HAS_CHUNK, HAS_SEGMENTS, HAS_GROUPS)
        # fmt: on
        out = OUT + offs_m[:, None] * Lk + offs_n[None, :]
        tl.store(out, visible.to(tl.int8), mask=(offs_m < Lq)[:, None] & key_in[None, :])


def _kernel_visible(spec: MaskSpec, lq: int, lk: int, device: str) -> torch.Tensor:
    args = triton_common.mask_args(spec, torch.device(device))
    out = torch.full((lq, lk), -1, dtype=torch.int8, device=device)
    kv_valid = args.pop("kv_valid")
    positions = [args.pop(name) for name in ("window", "chunk", "chunk_shift", "facts", "n_facts")]
    for unused in ("scale", "softcap", "bias", "bias_n", "bias_origin"):
        del args[unused]
    block_m = 16
    _visible_kernel[(triton.cdiv(lq, block_m),)](
        kv_valid, out, lq, lk, *positions, **args, BLOCK_M=block_m, BLOCK_N=triton.next_power_of_2(lk)
    )
    return out.cpu()


@needs_triton
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("lengths", [(37, 37), (23, 41)])
def test_triton_visible_pairs_match_the_dense_mask(mask, lengths, rng):
    lq, lk = lengths
    _, _, spec, _, _ = random_case(rng, MASKS[mask], torch.float32, lq=lq, lk=lk)
    assert torch.equal(_kernel_visible(spec, lq, lk, DEVICE), _dense(spec, lq, lk).to(torch.int8))


@pytest.mark.cuda
@pytest.mark.parametrize("mask", list(MASKS))
def test_gpu_visible_pairs_match_the_dense_mask(mask, rng):
    _, _, spec, _, _ = random_case(rng, MASKS[mask], torch.float32, lq=300, lk=300)
    assert torch.equal(_kernel_visible(spec, 300, 300, "cuda"), _dense(spec, 300, 300).to(torch.int8))
