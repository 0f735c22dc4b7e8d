"""Autotuning of the kernels' launch shapes (kernels/autotune.py, issue 18 step 3):
ATTNSCOPE_AUTOTUNE=1 picks a shape from each kernel's small filtered space, once per (kernel,
shape), tries SKIP_INTERIOR both ways on the winner, and the results equal the default launch's;
unset, the default shape is used and nothing is timed. Run under the Triton interpreter (small
shapes); the GPU timings decide which shape wins there.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnscope.kernels import autotune, digest, neuron, rowstats, tiles, topk, triton_common

from reference import MASKS, assert_close, on_device, random_case, rounding_floor

pytestmark = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(autotune, "_TUNED", {})
    monkeypatch.delenv(autotune.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv(autotune.SKIP_INTERIOR_ENV, raising=False)
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)


def _options(options: dict) -> tuple:
    return tuple(sorted(options.items()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_spaces_start_with_the_default_and_respect_the_compile_limits(dtype, fresh_cache):
    for d in (16, 64, 128, 256):
        space = autotune.loop_space(d, dtype)
        assert space[0] == autotune.loop_config(d, dtype), "the compile-report default comes first"
        assert 2 <= len(space) <= 24 and len({(m, n, _options(o)) for m, n, o in space}) == len(space)
        width = triton_common.block_d(d)
        for m, n, options in space:
            assert options["num_stages"] * n * width * dtype.itemsize + m * width * dtype.itemsize <= (
                autotune.SHARED_LIMIT
            )
            assert options["SKIP_INTERIOR"] is False, "SKIP_INTERIOR is a toggle, off by default"
            if dtype == torch.float32:
                assert m <= (32 if width <= 64 else 16), "fp32 tiles past the register limit"
        for kp in (16, 128):
            top = topk.topk_space(kp, d, dtype)
            assert top[0] == topk.topk_config(kp, d, dtype) and all(n == kp for _, n, _ in top)
            assert all(m <= max(16, 2048 // kp) for m, _, _ in top), "the merge's registers"
        cells = neuron.neuron_space(d)
        assert cells[0][1] == neuron.neuron_block(d) and len(cells) == len(
            {(n, _options(o)) for _, n, o in cells}
        )
        assert all(n * width <= 8192 * options["num_warps"] // 4 for _, n, options in cells), (
            "64 values a thread"
        )


def test_the_digest_takes_32_key_blocks_in_half_precision_where_64_spill(fresh_cache):
    for d in (64, 128, 256):
        assert autotune.digest_config(d, torch.float16)[:2] == (64, 32)
        assert autotune.digest_config(d, torch.float32) == autotune.loop_config(d, torch.float32)
        assert autotune.digest_config(d, torch.bfloat16, block_n=16)[1] == 16, "block sizes passed in win"
    assert (
        topk.topk_config(16, 256, torch.float32)[0] == 32
        and topk.topk_config(16, 256, torch.float16)[0] == 64
    )


def test_skip_interior_is_off_by_default_and_an_environment_variable_turns_it_on(fresh_cache, monkeypatch):
    assert not autotune.loop_config(64, torch.float16)[2]["SKIP_INTERIOR"]
    assert not topk.topk_config(16, 64, torch.float16)[2]["SKIP_INTERIOR"]
    monkeypatch.setenv(autotune.SKIP_INTERIOR_ENV, "1")
    assert autotune.loop_config(64, torch.float16)[2]["SKIP_INTERIOR"]
    assert all(options["SKIP_INTERIOR"] for _, _, options in autotune.loop_space(64, torch.float16))


def test_autotune_picks_from_the_space_caches_per_shape_and_keeps_the_results(rng, monkeypatch, fresh_cache):
    q, k, spec, p, _ = random_case(rng, MASKS["causal"], torch.float32, hq=2, hkv=1, lq=37, lk=37, d=16)
    q, k, spec = on_device(q, k, spec)

    def every_kernel():
        lse, ent = rowstats.row_stats_triton(q, k, spec)
        got = digest.digest_triton(q, k, spec, lse, pooled_size=(5, 7), received=True, terms=True)
        got["tile"] = tiles.probs_tile_triton(q, k, spec, lse, 1, range(3, 37), range(2, 30))
        got["top"] = topk.topk_triton(q, k, spec, lse, 1, 3, range(0, 37))[1]
        got["cells"] = neuron.neuron_triton(q, k, spec, lse, 1, 30, range(0, 37)).probs
        return lse, ent, got

    default_lse, default_ent, default = every_kernel()
    assert autotune.chosen_configs() == [], "nothing is timed without ATTNSCOPE_AUTOTUNE"

    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    spaces, timed = [], []
    real_time = autotune._time

    def count(run, config):
        timed.append(config)
        return real_time(run, config)

    monkeypatch.setattr(autotune, "_time", count)
    loop = {(m, n, _options(o)) for m, n, o in autotune.loop_space(16, torch.float32)[:2]}
    for module, name in ((autotune, "loop_space"), (tiles, "_tile_space")):
        real = getattr(module, name)

        def short(*args, real=real):  # the first two shapes keep the interpreter run short
            spaces.append(real.__name__)
            return real(*args)[:2]

        monkeypatch.setattr(module, name, short)
    monkeypatch.setattr(topk, "topk_space", lambda *args, real=topk.topk_space: real(*args)[:2])
    monkeypatch.setattr(neuron, "neuron_space", lambda *args, real=neuron.neuron_space: real(*args)[:2])

    lse, ent, got = every_kernel()
    chosen = autotune.chosen_configs()
    assert [c["kernel"] for c in chosen] == ["row_stats", "digest", "probs_tile", "top_k", "neuron"]
    assert len(spaces) == 3
    # Two shapes each, then the winner with SKIP_INTERIOR flipped (the kernels that mask tiles).
    assert len(timed) == 2 * 5 + 4
    flipped = [config for config in timed if config[2].get("SKIP_INTERIOR")]
    assert len(flipped) == 4, "SKIP_INTERIOR tried on the fastest shape of each masking kernel"
    for c in chosen[:2]:
        options = {name: c[name] for name in ("num_stages", "num_warps")}
        assert (c["block_m"], c["block_n"], _options({**options, "SKIP_INTERIOR": False})) in loop
    floor = rounding_floor(q, k, spec.scaling)
    assert_close(lse.cpu(), default_lse.cpu(), 1e-5, "lse, tuned against default")
    assert_close(ent.cpu(), default_ent.cpu(), 1e-5, "entropy, tuned against default")
    for name in ("pooled", "received", "terms", "tile", "top", "cells"):
        assert_close(got[name].cpu(), default[name].cpu(), 40 * floor, f"{name}, tuned against default")
    assert_close(got["received"].cpu(), p.sum(1).float(), 40 * floor, "received against dense float64")
    # The same shape again: no new timing; another shape: timed once more.
    timed.clear()
    rowstats.row_stats_triton(q, k, spec)
    assert timed == [] and len(autotune.chosen_configs()) == 5
    rowstats.row_stats_triton(q[:, :30], k[:, :30], spec)
    assert len(spaces) == 4 and len(autotune.chosen_configs()) == 6
    # Block sizes passed in (the tests' tiles) win over autotuning.
    rowstats.row_stats_triton(q, k, spec, block_m=16, block_n=16)
    assert len(spaces) == 4


def test_a_shape_that_fails_to_build_is_skipped_and_none_building_is_an_error(fresh_cache, monkeypatch):
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    good = (16, 16, {"num_warps": 4, "SKIP_INTERIOR": False})
    bad = (64, 64, {"num_warps": 8, "SKIP_INTERIOR": False})

    def run(m, n, options):
        if m == 64 or options["SKIP_INTERIOR"]:
            raise RuntimeError("out of resources: shared memory")
        return m * n

    assert autotune.tuned_launch("k", ("s",), bad, lambda: [bad, good], run) == 256
    assert autotune.chosen_configs()[0]["block_m"] == 16
    with pytest.raises(RuntimeError, match="no launch shape of k2 builds"):
        autotune.tuned_launch("k2", ("s",), bad, lambda: [bad], run)


def test_choices_are_kept_in_the_cache_file_across_processes(fresh_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    cache = tmp_path / "tuned" / "autotune.json"
    monkeypatch.setenv(autotune.CACHE_ENV, str(cache))
    fast = (32, 16, {"num_warps": 4, "SKIP_INTERIOR": False})
    slow = (16, 16, {"num_warps": 4, "SKIP_INTERIOR": False})
    timings = {32: 1.0, 16: 2.0}
    monkeypatch.setattr(
        autotune, "_time", lambda run, config: timings[config[0]] + config[2]["SKIP_INTERIOR"]
    )
    assert autotune.tuned_launch("k", (7, "a"), slow, lambda: [slow, fast], lambda *c: c) == fast
    (entry,) = json.loads(cache.read_text()).values()
    assert entry == [32, 16, {"num_warps": 4, "SKIP_INTERIOR": False}]

    monkeypatch.setattr(autotune, "_TUNED", {})  # a new process: the file answers, nothing is timed
    monkeypatch.setattr(autotune, "_time", lambda run, config: pytest.fail("timed again"))
    assert autotune.tuned_launch("k", (7, "a"), slow, lambda: [slow, fast], lambda *c: c) == fast
    assert autotune.chosen_configs()[0]["block_m"] == 32

    cache.write_text("{not json")  # a damaged file is timed again, with a warning
    monkeypatch.setattr(autotune, "_TUNED", {})
    monkeypatch.setattr(autotune, "_time", lambda run, config: timings[config[0]])
    with pytest.warns(UserWarning, match="ignoring the autotune cache"):
        assert autotune.tuned_launch("k", (7, "a"), slow, lambda: [slow, fast], lambda *c: c) == fast
