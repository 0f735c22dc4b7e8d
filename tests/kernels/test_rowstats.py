"""Row statistics (kernels/rowstats.py): each row's log-sum-exp and entropy.

Torch twin against a dense float64 recompute; the Triton kernel (interpreted on the CPU) against
float64 and the torch twin under the 2× error rule (tests/reference.py); the GPU at every head
dim and dtype, and at L = 131,072 (64-bit offsets).
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import MaskSpec, row_stats_torch, rowstats, triton_common

from reference import (
    BLOCKS,
    DEVICE,
    MASKS,
    SHAPES,
    assert_close,
    dense_entropy,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
# float64 inputs: views come back as float32, so the floor is float32 rounding of values <= 1.
TOL = {torch.float32: 5e-6, torch.float64: 1e-7}  # float32: exp(s - lse) carries |s|·eps


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_torch_matches_dense_float64(mask, dtype, rng, small_chunks):
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype)
    lse, ent = row_stats_torch(q, k, spec)
    assert not torch.isnan(lse).any() and not torch.isnan(ent).any()
    assert_close(ent, dense_entropy(p, sinks), 20 * TOL[dtype], "entropy")


def test_torch_empty_rows_are_minus_inf_and_zero(rng):
    q = torch.randn(2, 6, 8, generator=rng)
    k = torch.randn(2, 6, 8, generator=rng)
    spec = MaskSpec(
        scaling=0.3, causal=True, key_padding=torch.tensor([[False, False, True, True, True, True]])
    )
    lse, ent = row_stats_torch(q, k, spec)
    assert torch.isneginf(lse[:, :2]).all() and (ent[:, :2] == 0).all()


# ---- Triton (interpreted on the CPU) -------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_triton_matches_float64_and_torch(shape, mask, dtype, rng):
    hq, hkv, lq, lk, d = SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    q, k, spec = on_device(q, k, spec)
    lse_t, ent_t = rowstats.row_stats_torch(q, k, spec)
    lse_k, ent_k = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    within_rule(lse_k, lse_t, lse64, "lse", floor)
    within_rule(ent_k, ent_t, dense_entropy(p, sinks), "entropy", floor=2e-5)


PACKED_SHAPES = {"gqa2_L37": (4, 2, 37), "gqa3_L11": (6, 2, 11), "gqa7_L9": (7, 1, 9)}


@needs_triton
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(PACKED_SHAPES))
def test_triton_packed_gqa_programs_match_float64(shape, mask, rng):
    """Each group of query heads packed into one program (group sizes 2, 3 and 7: packed blocks
    mix heads and straddle positions unevenly)."""
    hq, hkv, length = PACKED_SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], torch.float32, hq=hq, hkv=hkv, lq=length, lk=length)
    q, k, spec = on_device(q, k, spec)
    lse_t, ent_t = rowstats.row_stats_torch(q, k, spec)
    lse_k, ent_k = rowstats.row_stats_triton(q, k, spec, pack_gqa=True, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    within_rule(lse_k, lse_t, lse64, "packed lse", floor)
    within_rule(ent_k, ent_t, dense_entropy(p, sinks), "packed entropy", floor=2e-5)


def test_gqa_packing_is_chosen_where_it_saves_programs():
    assert triton_common.gqa_pack(4, 20, 64) == 4  # 4 half-empty blocks become 2 full ones
    assert triton_common.gqa_pack(4, 4096, 64) == 1  # long rows: same K reads either way
    assert triton_common.gqa_pack(1, 5, 64) == 1  # nothing to pack
    assert triton_common.gqa_pack(4, 4096, 64, requested=True) == 4
    assert triton_common.gqa_pack(4, 20, 64, requested=False) == 1


@needs_triton
def test_triton_fully_masked_rows_are_empty(rng):
    q = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    real = torch.ones(1, 20, dtype=torch.bool)
    real[0, :5] = False
    spec = MaskSpec(scaling=0.2, causal=True, key_padding=real.to(DEVICE))
    lse, ent = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    assert torch.isneginf(lse[:, :5]).all() and (ent[:, :5] == 0).all()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_triton_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launcher's own block sizes (`loop_config`), L = 70 so that
    64-row blocks are uneven."""
    q, k, spec, _, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    within_rule(lse_k, lse_t, rowstats.row_stats_torch(q.double(), k.double(), spec)[0], "lse", floor)


# ---- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
def test_gpu_follows_the_error_rule(d, mask, dtype, rng):
    q, k, spec, _, _ = random_case(rng, MASKS[mask], dtype, hq=8, hkv=2, lq=1023, lk=1023, d=d)
    q, k, spec = on_device(q, k, spec, "cuda")
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    within_rule(lse_k, lse_t, lse64, "lse", floor=1e-5)
    lse_packed, _ = rowstats.row_stats_triton(q, k, spec, pack_gqa=True)
    within_rule(lse_packed, lse_t, lse64, "lse, GQA-packed programs", floor=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_at_131072_tokens(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    L, d = 131072, 64
    q = torch.randn(2, L, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, L, d, device="cuda", dtype=dtype, generator=gen)
    spec = MaskSpec(scaling=d**-0.5, causal=True)
    lse, ent = rowstats.row_stats_triton(q, k, spec)
    assert not lse.isnan().any() and not ent.isnan().any()
    rows = torch.tensor([0, 1, 4095, 65536, L - 2, L - 1], device="cuda")
    for head in range(2):
        s = (q[head, rows].double() @ k[0].double().T) * spec.scaling
        s = s.masked_fill(torch.arange(L, device="cuda")[None, :] > rows[:, None], float("-inf"))
        ref = torch.logsumexp(s, -1)
        assert (lse[head, rows].double() - ref).abs().max() < 1e-4
        p = torch.exp(s - ref[:, None])
        ref_ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
        assert (ent[head, rows].double() - ref_ent).abs().max() < 1e-3
