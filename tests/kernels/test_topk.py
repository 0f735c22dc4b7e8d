"""Top-k keys per query row (kernels/topk.py), with exact probabilities.

Torch twin against a dense float64 sort; the fused Triton kernel (interpreted on the CPU) against
float64 and the torch twin, with its tie rule and padding, and past FUSED_MAX_K the tile path;
the GPU at every head dim and dtype, and at L = 131,072.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import MaskSpec, row_stats_torch, rowstats, topk, topk_torch, triton_common

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


def _expected_topk(p_rows: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 top-k with the kernel's tie rule (lower key index first) and -1/0 padding."""
    # A stable descending sort keeps equal probabilities in key order.
    order = torch.sort(p_rows, dim=1, descending=True, stable=True).indices[:, :count]
    probs = p_rows.gather(1, order)
    return torch.where(probs > 0, order, -1), torch.where(probs > 0, probs, 0.0)


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["causal", "causal_window", "padding", "bidirectional"])
def test_torch_matches_dense(mask, rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], torch.float64)
    lse, _ = row_stats_torch(q, k, spec)
    head = 1
    idx, probs = topk_torch(q, k, spec, lse, head, 4, range(2, 37))
    for r, row in enumerate(range(2, 37)):
        expected = p[head, row].sort(descending=True).values[:4]
        visible = int((p[head, row] > 0).sum())
        assert_close(probs[r], torch.where(torch.arange(4) < visible, expected, 0), 1e-7, f"topk row {row}")
        for j in range(4):
            if j < visible:
                assert_close(p[head, row, idx[r, j]], probs[r, j], 1e-7, "topk index")
            else:
                assert idx[r, j] == -1 and probs[r, j] == 0


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
    idx_k, val_k = topk.topk_triton(q, k, spec, lse_k, 0, 4, range(lq))
    _, val_t = topk.topk_torch(q, k, spec, lse_t, 0, 4, range(lq))
    within_rule(val_k, val_t, p[0].sort(dim=1, descending=True).values[:, :4], "topk probs", floor)
    found = p[0].gather(1, idx_k.clamp(min=0).cpu()) * (idx_k >= 0).cpu()
    assert_close(found, val_k, 2 * floor, "topk indices")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", ["causal", "causal_padding_window", "sinks", "bidirectional_window"])
@pytest.mark.parametrize("count", [1, 4, 17])
def test_triton_fused_topk_matches_float64(mask, count, dtype, rng):
    """Running top-k per row: values and indices against a dense float64 sort, rows that see fewer
    than k keys padded with -1 / 0, a query range that starts mid-sequence. (fp32 past k = 16 is
    the tile path's, with the same contract.)"""
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=4, hkv=2, lq=45, lk=45, d=40)
    q, k, spec = on_device(q, k, spec)
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    idx, val = topk.topk_triton(q, k, spec, lse, 3, count, range(6, 45))
    want_idx, want_val = _expected_topk(p[3, 6:], count)
    assert idx.shape == val.shape == (39, count) and idx.dtype == torch.int64
    floor = max(1e-5, 2 * rounding_floor(q, k, spec.scaling))
    assert_close(val, want_val, floor, "top-k probabilities")
    # Indices may differ only where two probabilities are within rounding of each other.
    differ = idx.cpu() != want_idx
    if differ.any():
        assert_close(p[3, 6:].gather(1, idx.cpu().clamp(min=0))[differ], want_val[differ], floor, "tied keys")
    assert torch.equal(idx.cpu() < 0, want_idx < 0), "padding of rows with fewer visible keys"


@needs_triton
def test_triton_ties_prefer_lower_keys_and_large_k_uses_tiles(rng):
    # Zero queries: every visible key has the same probability, so the k lowest visible keys win.
    q = torch.zeros(2, 40, 32, device=DEVICE)
    k = torch.randn(2, 40, 32, generator=rng).to(DEVICE)
    spec = MaskSpec(scaling=0.125, causal=True, window=30)
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    idx, val = topk.topk_triton(q, k, spec, lse, 1, 8, range(40))
    for row in range(40):
        first = max(0, row - 29)
        visible = row - first + 1
        expect = torch.arange(first, first + min(8, visible))
        assert torch.equal(idx[row, : len(expect)].cpu(), expect), f"row {row}: {idx[row].tolist()}"
        assert (idx[row, len(expect) :] == -1).all() and (val[row, len(expect) :] == 0).all()
        assert_close(val[row, : len(expect)], torch.full((len(expect),), 1.0 / visible), 1e-6, "uniform")
    # Past FUSED_MAX_K the tile kernel + torch.topk path answers, with the same contract.
    q, k, spec, p, _ = random_case(rng, MASKS["causal"], torch.float32, hq=2, hkv=2, lq=140, lk=140, d=16)
    lse, _ = rowstats.row_stats_triton(q.to(DEVICE), k.to(DEVICE), spec, **BLOCKS)
    count = topk.FUSED_MAX_K + 3
    idx, val = topk.topk_triton(q.to(DEVICE), k.to(DEVICE), spec, lse, 0, count, range(130, 140))
    assert_close(val, _expected_topk(p[0, 130:], count)[1], 1e-5, "large-k probabilities")
    assert torch.equal(idx.cpu() < 0, torch.arange(count)[None, :] > torch.arange(130, 140)[:, None])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_triton_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launcher's own block sizes, L = 70."""
    q, k, spec, p, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    _, val = topk.topk_triton(q, k, spec, lse_k, 2, 8, range(70))
    _, val_t = topk.topk_torch(q, k, spec, lse_t, 2, 8, range(70))
    within_rule(val, val_t, p[2].sort(dim=1, descending=True).values[:, :8], "top-k", floor)


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
    _, val_k = topk.topk_triton(q, k, spec, lse_k, 7, 16, range(1023))
    _, val_t = topk.topk_torch(q, k, spec, lse_t, 7, 16, range(1023))
    within_rule(val_k, val_t, p[7].sort(dim=1, descending=True).values[:, :16], "top-k", floor=floor)


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
        idx, val = topk.topk_triton(q, k, spec, lse, head, 16, range(L - 2, L))
        top = p.topk(16, dim=1)
        assert (val.double() - top.values).abs().max() < 1e-6
        assert (p.gather(1, idx) - top.values).abs().max() < 1e-6
