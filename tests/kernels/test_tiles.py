"""Probability tiles (kernels/tiles.py): exact P for any query range × key range of one head.

Torch twin against a dense float64 recompute; the Triton kernel (interpreted on the CPU) against
float64 and the torch twin under the 2× error rule (tests/reference.py); the GPU at every head
dim and dtype, and at L = 131,072 (64-bit offsets).
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import MaskSpec, probs_tile_torch, row_stats_torch, rowstats, tiles, triton_common

from reference import (
    BLOCKS,
    DEVICE,
    MASKS,
    SHAPES,
    assert_close,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
TOL = {torch.float32: 5e-6, torch.float64: 1e-7}  # float32: exp(s - lse) carries |s|·eps


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_torch_matches_dense_float64(mask, dtype, rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype)
    tol = TOL[dtype]
    lse, _ = row_stats_torch(q, k, spec)
    for head in range(q.shape[0]):
        tile = probs_tile_torch(q, k, spec, lse, head, range(q.shape[1]), range(k.shape[1]))
        assert_close(tile, p[head], tol, f"tile head {head}")
    sub = probs_tile_torch(q, k, spec, lse, 3, range(5, 30), range(11, 36))
    assert_close(sub, p[3, 5:30, 11:36], tol, "sub-tile")


def test_torch_empty_rows_are_zero_not_nan(rng):
    q = torch.randn(2, 6, 8, generator=rng)
    k = torch.randn(2, 6, 8, generator=rng)
    spec = MaskSpec(
        scaling=0.3, causal=True, key_padding=torch.tensor([[False, False, True, True, True, True]])
    )
    lse, _ = row_stats_torch(q, k, spec)
    tile = probs_tile_torch(q, k, spec, lse, 0, range(6), range(6))
    assert not tile.isnan().any() and (tile[:2] == 0).all()
    assert_close(tile[2:].sum(-1), torch.ones(4), 1e-6, "non-empty rows sum to one")


# ---- Triton (interpreted on the CPU) -------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_triton_matches_float64_and_torch(shape, mask, dtype, rng):
    hq, hkv, lq, lk, d = SHAPES[shape]
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    q, k, spec = on_device(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    for head in range(hq):
        tile_k = tiles.probs_tile_triton(q, k, spec, lse_k, head, range(lq), range(lk), **BLOCKS)
        tile_t = tiles.probs_tile_torch(q, k, spec, lse_t, head, range(lq), range(lk))
        within_rule(tile_k, tile_t, p[head], f"tile head {head}", floor)
    sub_k = tiles.probs_tile_triton(q, k, spec, lse_k, hq - 1, range(3, lq - 2), range(5, lk), **BLOCKS)
    sub_t = tiles.probs_tile_torch(q, k, spec, lse_t, hq - 1, range(3, lq - 2), range(5, lk))
    within_rule(sub_k, sub_t, p[hq - 1, 3 : lq - 2, 5:], "sub-tile", floor)


@needs_triton
def test_triton_fully_masked_rows_are_zero(rng):
    q = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    real = torch.ones(1, 20, dtype=torch.bool)
    real[0, :5] = False
    spec = MaskSpec(scaling=0.2, causal=True, key_padding=real.to(DEVICE))
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    tile = tiles.probs_tile_triton(q, k, spec, lse, 0, range(20), range(20), **BLOCKS)
    assert not tile.isnan().any() and (tile[:5] == 0).all()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_triton_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launchers' own block sizes (`loop_config`), L = 70."""
    q, k, spec, p, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    tile = tiles.probs_tile_triton(q, k, spec, lse_k, 3, range(70), range(70))
    within_rule(tile, tiles.probs_tile_torch(q, k, spec, lse_t, 3, range(70), range(70)), p[3], "tile", floor)


# ---- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
def test_gpu_follows_the_error_rule(d, mask, dtype, rng):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=8, hkv=2, lq=1023, lk=1023, d=d)
    q, k, spec = on_device(q, k, spec, "cuda")
    floor = rounding_floor(q, k, spec.scaling)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    for head in (0, 7):
        tile_k = tiles.probs_tile_triton(q, k, spec, lse_k, head, range(1023), range(1023))
        tile_t = tiles.probs_tile_torch(q, k, spec, lse_t, head, range(1023), range(1023))
        within_rule(tile_k, tile_t, p[head], f"tile head {head}", floor=floor)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_at_131072_tokens(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    L, d = 131072, 64
    q = torch.randn(2, L, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, L, d, device="cuda", dtype=dtype, generator=gen)
    spec = MaskSpec(scaling=d**-0.5, causal=True)
    lse, _ = rowstats.row_stats_triton(q, k, spec)
    rows = torch.tensor([L - 2, L - 1], device="cuda")
    for head in range(2):
        s = (q[head, rows].double() @ k[0].double().T) * spec.scaling
        s = s.masked_fill(torch.arange(L, device="cuda")[None, :] > rows[:, None], float("-inf"))
        p = torch.exp(s - torch.logsumexp(s, -1)[:, None])
        tile = tiles.probs_tile_triton(q, k, spec, lse, head, range(L - 2, L), range(L - 4096, L))
        assert (tile.double() - p[:, L - 4096 :]).abs().max() < 1e-6
