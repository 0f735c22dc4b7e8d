"""Autotuning of the looping kernels' launch shapes (kernels/triton_common.py, issue 18 step 3):
ATTNSCOPE_AUTOTUNE=1 picks a shape from the small filtered space, once per (kernel, shape), and
the results equal the default launch's; unset, the default shape is used and nothing is timed.
Run under the Triton interpreter (small shapes); the GPU timings decide which shape wins there.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import digest, rowstats, triton_common

from reference import MASKS, assert_close, on_device, random_case, rounding_floor

pytestmark = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_space_starts_with_the_default_and_respects_the_compile_limits(dtype):
    for d in (16, 64, 128, 256):
        space = triton_common.loop_space(d, dtype)
        assert space[0] == triton_common.loop_config(d, dtype), "the compile-report default comes first"
        assert 2 <= len(space) <= 24 and len({(m, n, tuple(sorted(o.items()))) for m, n, o in space}) == len(
            space
        )
        width = triton_common.block_d(d)
        for m, n, options in space:
            assert (
                options["num_stages"] * n * width * dtype.itemsize + m * width * dtype.itemsize <= 144 * 1024
            )
            if dtype == torch.float32:
                assert m <= (32 if width <= 64 else 16), "fp32 tiles past the register limit"


def test_autotune_picks_from_the_space_caches_per_shape_and_keeps_the_results(rng, monkeypatch):
    monkeypatch.setattr(triton_common, "_TUNED", {})
    q, k, spec, p, _ = random_case(rng, MASKS["causal"], torch.float32, hq=2, hkv=1, lq=37, lk=37, d=16)
    q, k, spec = on_device(q, k, spec)
    monkeypatch.delenv(triton_common.AUTOTUNE_ENV, raising=False)
    default_lse, default_ent = rowstats.row_stats_triton(q, k, spec)
    default_digest = digest.digest_triton(
        q, k, spec, default_lse, pooled_size=(5, 7), received=True, terms=True
    )
    assert triton_common.chosen_configs() == [], "nothing is timed without ATTNSCOPE_AUTOTUNE"

    monkeypatch.setenv(triton_common.AUTOTUNE_ENV, "1")
    spaces = []
    real_space = triton_common.loop_space

    def small_space(d, dtype):  # the first three shapes keep the interpreter run short
        spaces.append(d)
        return real_space(d, dtype)[:3]

    monkeypatch.setattr(triton_common, "loop_space", small_space)
    lse, ent = rowstats.row_stats_triton(q, k, spec)
    got = digest.digest_triton(q, k, spec, lse, pooled_size=(5, 7), received=True, terms=True)
    chosen = triton_common.chosen_configs()
    assert [c["kernel"] for c in chosen] == ["row_stats", "digest"] and len(spaces) == 2
    for c in chosen:
        assert (c["block_m"], c["block_n"], {"num_stages": c["num_stages"], "num_warps": c["num_warps"]}) in (
            real_space(16, torch.float32)[:3]
        )
    floor = rounding_floor(q, k, spec.scaling)
    assert_close(lse.cpu(), default_lse.cpu(), 1e-5, "lse, tuned against default")
    assert_close(ent.cpu(), default_ent.cpu(), 1e-5, "entropy, tuned against default")
    for name in ("pooled", "received", "terms"):
        assert_close(
            got[name].cpu(), default_digest[name].cpu(), 40 * floor, f"{name}, tuned against default"
        )
    assert_close(got["received"].cpu(), p.sum(1).float(), 40 * floor, "received against dense float64")
    # The same shape again: no new timing; another shape: timed once more.
    rowstats.row_stats_triton(q, k, spec)
    assert len(spaces) == 2 and len(triton_common.chosen_configs()) == 2
    rowstats.row_stats_triton(q[:, :30], k[:, :30], spec)
    assert len(spaces) == 3 and len(triton_common.chosen_configs()) == 3
    # Block sizes passed in (the tests' tiles) win over autotuning.
    rowstats.row_stats_triton(q, k, spec, block_m=16, block_n=16)
    assert len(spaces) == 3
