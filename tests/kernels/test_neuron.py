"""Neuron view (kernels/neuron.py): one query row of one head, term by term.

Torch twin against a dense float64 recompute; the Triton kernel (interpreted on the CPU) against
the torch twin field by field and against float64 under the 2× error rule; the GPU at every head
dim and dtype.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import neuron, neuron_torch, row_stats_torch, rowstats, triton_common

from reference import (
    BLOCKS,
    MASKS,
    SHAPES,
    assert_close,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["causal", "causal_window", "padding", "bidirectional"])
def test_torch_matches_dense(mask, rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], torch.float64)
    lse, _ = row_stats_torch(q, k, spec)
    head = 1
    view = neuron_torch(q, k, spec, lse, head, 20, range(4, 33))
    assert_close(view.q, q[head, 20], 1e-6, "neuron q")
    assert_close(view.k, k[head // 2, 4:33], 1e-6, "neuron k")
    assert_close(view.q_times_k, q[head, 20][None] * k[head // 2, 4:33], 1e-6, "q×k")
    assert_close(view.probs, p[head, 20, 4:33], 1e-7, "neuron probs")
    finite = ~torch.isinf(view.scores)
    assert_close(view.scores[finite], (view.q_times_k.sum(-1) * spec.scaling)[finite], 1e-5, "scores")
    assert bool((view.probs[~finite] == 0).all())


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
    view_k = neuron.neuron_triton(q, k, spec, lse_k, 1, lq - 3, range(2, lk), block_n=16)
    view_t = neuron.neuron_torch(q, k, spec, lse_t, 1, lq - 3, range(2, lk))
    for name, a, b in zip(view_k._fields, view_k, view_t, strict=True):
        if name == "scores":
            assert torch.equal(torch.isinf(a), torch.isinf(b)), "masked scores differ"
            a, b = a[torch.isfinite(b)], b[torch.isfinite(b)]
        assert_close(a, b, max(1e-5, 2 * floor), f"neuron {name}")
    within_rule(view_k.probs, view_t.probs, p[1, lq - 3, 2:], "neuron probs vs float64", floor)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_triton_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launcher's own block size, L = 70."""
    q, k, spec, p, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    view = neuron.neuron_triton(q, k, spec, lse_k, 1, 69, range(70))
    within_rule(
        view.probs, neuron.neuron_torch(q, k, spec, lse_t, 1, 69, range(70)).probs, p[1, 69], "neuron", floor
    )


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
    view_k = neuron.neuron_triton(q, k, spec, lse_k, 5, 1000, range(1023))
    view_t = neuron.neuron_torch(q, k, spec, lse_t, 5, 1000, range(1023))
    within_rule(view_k.probs, view_t.probs, p[5, 1000], "neuron probs", floor=floor)
