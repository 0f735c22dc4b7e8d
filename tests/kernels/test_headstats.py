"""Head statistics (kernels/headstats.py): per-row terms from the digest pass, reduced to one
number per head.

Torch twin against the dense float64 definitions (tests/reference.py); the Triton digest's row
terms (interpreted on the CPU) against float64 and the torch twin under the 2× error rule, and
their means against the dense definitions; the GPU at every head dim and dtype.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import digest, head_stats_torch, headstats, row_stats_torch, rowstats, triton_common

from reference import (
    BLOCKS,
    MASKS,
    SHAPES,
    assert_close,
    dense_head_stats,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
TOL = {torch.float32: 5e-6, torch.float64: 1e-7}


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_torch_matches_dense_float64(mask, dtype, rng, small_chunks):
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype)
    lse, ent = row_stats_torch(q, k, spec)
    stats = head_stats_torch(q, k, spec, lse, ent)
    for name, expected in dense_head_stats(p, sinks).items():
        assert_close(stats[name], expected, max(TOL[dtype] * 100, 1e-5), name)


def test_chunk_terms_of_a_whole_matrix_are_the_definitions(rng):
    p = torch.softmax(torch.randn(2, 9, 9, generator=rng, dtype=torch.float64), -1)
    terms = headstats.chunk_terms(p, 0, 0)
    rows = torch.arange(9)
    assert_close(terms[0, :, 1:], p[:, rows[1:], rows[1:] - 1], 0, "previous")
    assert_close(terms[0, :, 0], torch.zeros(2), 0, "no previous token for row 0")
    assert_close(terms[1], p[:, rows, rows], 0, "self")
    assert_close(terms[2], p[:, :, 0], 0, "first")
    assert_close(terms[3], (p * (rows[:, None] - rows[None, :]).abs()).sum(-1), 1e-12, "distance")


# ---- Triton (interpreted on the CPU) -------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_triton_terms_match_float64_and_torch(shape, mask, dtype, rng):
    """The digest asked for row terms alone (the pass head_stats() runs when no pooled map left
    them), then reduced to the statistics."""
    hq, hkv, lq, lk, d = SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    q, k, spec = on_device(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, ent_k = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    terms = digest.digest_triton(q, k, spec, lse_k, terms=True, **BLOCKS)["terms"]
    terms_t = digest.row_terms_torch(q, k, spec, lse_t)
    terms64 = digest.row_terms_torch(q.double(), k.double(), spec, lse64)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    within_rule(terms, terms_t, terms64, "head-stat row terms", floor=max(5e-5, floor))
    stats = headstats.reduce_head_stats(lse_k, ent_k, terms)
    for name, expected in dense_head_stats(p, sinks).items():
        # mean_distance is in tokens: its error grows with the distances (up to L).
        assert_close(stats[name], expected, 5e-5 * (lk if name == "mean_distance" else 1), name)


# ---- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
def test_gpu_terms_follow_the_error_rule(d, mask, dtype, rng):
    q, k, spec, _, _ = random_case(rng, MASKS[mask], dtype, hq=8, hkv=2, lq=1023, lk=1023, d=d)
    q, k, spec = on_device(q, k, spec, "cuda")
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    terms = digest.digest_triton(q, k, spec, lse_k, terms=True)["terms"]
    terms64 = digest.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(terms, digest.row_terms_torch(q, k, spec, lse_t), terms64, "terms", 1e-3)
