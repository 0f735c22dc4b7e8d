"""Every Triton kernel against a dense float64 recompute and against the torch backend.

On the CPU these run under ``TRITON_INTERPRET=1`` (set in conftest.py) with small tiles, so that
L = 37 or 41 spans several uneven blocks. Outputs are poisoned with NaN before each launch. The
acceptance rule follows FlashAttention's tests: the kernel's error against float64 may be at most
twice the torch backend's error in the same input precision, plus a float32-rounding floor.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnscope.kernels import MaskSpec, headstats, neuron, pooled, rowstats, tiles, topk, triton_common

from reference import (
    MASKS,
    assert_close,
    dense_entropy,
    dense_pooled,
    random_case,
    rounding_floor,
    within_rule,
)

pytestmark = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCKS = {"block_m": 16, "block_n": 16}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(triton_common, "POISON_OUTPUTS", True)


SHAPES = {
    "gqa2_d24_L37": (4, 2, 37, 37, 24),
    "mha_d80_cross": (2, 2, 23, 41, 80),
    "gqa4_d32_L50": (4, 1, 50, 50, 32),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_kernels_match_float64_and_torch_backend(shape, mask, dtype, rng):
    hq, hkv, lq, lk, d = SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    q, k = q.to(DEVICE), k.to(DEVICE)
    spec_dev = spec if spec.key_padding is None else replace(spec, key_padding=spec.key_padding.to(DEVICE))
    lse_t, ent_t = rowstats.row_stats_torch(q, k, spec_dev)
    lse_k, ent_k = rowstats.row_stats_triton(q, k, spec_dev, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec_dev)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    within_rule(lse_k, lse_t, lse64, "lse", floor)
    within_rule(ent_k, ent_t, dense_entropy(p, sinks), "entropy", floor=2e-5)

    for head in range(hq):
        tile_k = tiles.probs_tile_triton(q, k, spec_dev, lse_k, head, range(lq), range(lk), **BLOCKS)
        tile_t = tiles.probs_tile_torch(q, k, spec_dev, lse_t, head, range(lq), range(lk))
        within_rule(tile_k, tile_t, p[head], f"tile head {head}", floor)
    sub_k = tiles.probs_tile_triton(q, k, spec_dev, lse_k, hq - 1, range(3, lq - 2), range(5, lk), **BLOCKS)
    sub_t = tiles.probs_tile_torch(q, k, spec_dev, lse_t, hq - 1, range(3, lq - 2), range(5, lk))
    within_rule(sub_k, sub_t, p[hq - 1, 3 : lq - 2, 5:], "sub-tile", floor)

    for sq, sk in ((5, 7), (lq, lk), (min(13, lq), min(36, lk)), (1, 1)):
        digest = pooled.digest_triton(
            q, k, spec_dev, lse_k, pooled_size=(sq, sk), received=True, terms=True, **BLOCKS
        )
        within_rule(
            digest["pooled"],
            pooled.pooled_torch(q, k, spec_dev, lse_t, sq, sk),
            dense_pooled(p, sq, sk),
            f"pooled {sq}x{sk}",
            floor,
        )
        within_rule(
            digest["received"], pooled.received_torch(q, k, spec_dev, lse_t), p.sum(1), "received", 2e-5
        )
    terms_t = headstats.row_terms_torch(q, k, spec_dev, lse_t)
    terms64 = headstats.row_terms_torch(q.double(), k.double(), spec_dev, lse64)
    within_rule(digest["terms"], terms_t, terms64, "head-stat row terms", floor=5e-5)

    view_k = neuron.neuron_triton(q, k, spec_dev, lse_k, 1, lq - 3, range(2, lk), block_n=16)
    view_t = neuron.neuron_torch(q, k, spec_dev, lse_t, 1, lq - 3, range(2, lk))
    for name, a, b in zip(view_k._fields, view_k, view_t, strict=True):
        if name == "scores":
            assert torch.equal(torch.isinf(a), torch.isinf(b)), "masked scores differ"
            a, b = a[torch.isfinite(b)], b[torch.isfinite(b)]
        assert_close(a, b, max(1e-5, 2 * floor), f"neuron {name}")
    within_rule(view_k.probs, view_t.probs, p[1, lq - 3, 2:], "neuron probs vs float64", floor)

    idx_k, val_k = topk.topk_triton(q, k, spec_dev, lse_k, 0, 4, range(lq))
    _, val_t = topk.topk_torch(q, k, spec_dev, lse_t, 0, 4, range(lq))
    within_rule(val_k, val_t, p[0].sort(dim=1, descending=True).values[:, :4], "topk probs", floor)
    found = p[0].gather(1, idx_k.clamp(min=0).cpu()) * (idx_k >= 0).cpu()
    assert_close(found, val_k, 2 * floor, "topk indices")


def test_repeated_runs_agree(rng):
    """Atomics may reorder float additions, but never lose or double an update (races)."""
    q, k, spec, _, _ = random_case(rng, MASKS["causal_window"], torch.float32, lq=50, lk=50)
    q, k = q.to(DEVICE), k.to(DEVICE)
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    first = pooled.digest_triton(q, k, spec, lse, pooled_size=(7, 9), received=True, **BLOCKS)
    for _ in range(3):
        again = pooled.digest_triton(q, k, spec, lse, pooled_size=(7, 9), received=True, **BLOCKS)
        assert_close(again["pooled"], first["pooled"], 1e-6, "pooled repeat")
        assert_close(again["received"], first["received"], 1e-5, "received repeat")


def test_fully_masked_rows_are_zero(rng):
    q = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    real = torch.ones(1, 20, dtype=torch.bool)
    real[0, :5] = False
    spec = MaskSpec(scaling=0.2, causal=True, key_padding=real.to(DEVICE))
    lse, ent = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    assert torch.isneginf(lse[:, :5]).all() and (ent[:, :5] == 0).all()
    tile = tiles.probs_tile_triton(q, k, spec, lse, 0, range(20), range(20), **BLOCKS)
    assert not tile.isnan().any() and (tile[:5] == 0).all()
    terms = pooled.digest_triton(q, k, spec, lse, pooled_size=(4, 4), received=True, terms=True, **BLOCKS)
    assert not any(t.isnan().any() for t in terms.values())


def _compile_error():
    import ast

    from triton.compiler.errors import CompilationError

    return CompilationError("kernel source", ast.parse("x = 1").body[0], "unsupported on this GPU")


def _out_of_shared_memory():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(262144, 232448, "shared memory: unsupported on this GPU")


def _failed_pass():
    return RuntimeError("PassManager::run failed: unsupported on this GPU")


@pytest.mark.parametrize("failure", [_compile_error, _out_of_shared_memory, _failed_pass])
def test_a_kernel_that_cannot_be_built_falls_back_to_torch(failure, monkeypatch, rng):
    from attnscope.kernels import backend

    error = failure()

    def broken(*args, **kwargs):
        raise error

    q, k, spec, _, _ = random_case(rng, MASKS["causal"], torch.float32)
    monkeypatch.setattr(backend, "backend_name", lambda device: "triton")  # as on a CUDA machine
    monkeypatch.setattr(rowstats, "row_stats_triton", broken)
    monkeypatch.setattr(backend, "_broken", None)
    with pytest.warns(RuntimeWarning, match="failed to compile"):
        lse, _ = backend.row_stats(q, k, spec)
    assert_close(lse, rowstats.row_stats_torch(q, k, spec)[0], 1e-6, "fallback lse")
    assert backend._broken and "unsupported on this GPU" in backend._broken
    monkeypatch.setattr(backend, "_broken", None)
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")  # asked for explicitly: the error surfaces
    with pytest.raises(type(error)):
        backend.row_stats(q, k, spec)


def _expected_topk(p_rows: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 top-k with the kernel's tie rule (lower key index first) and -1/0 padding."""
    # A stable descending sort keeps equal probabilities in key order.
    order = torch.sort(p_rows, dim=1, descending=True, stable=True).indices[:, :count]
    probs = p_rows.gather(1, order)
    return torch.where(probs > 0, order, -1), torch.where(probs > 0, probs, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", ["causal", "causal_padding_window", "sinks", "bidirectional_window"])
@pytest.mark.parametrize("count", [1, 4, 17])
def test_fused_topk_matches_float64(mask, count, dtype, rng):
    """Running top-k per row: values and indices against a dense float64 sort, rows that see fewer
    than k keys padded with -1 / 0, a query range that starts mid-sequence. (fp32 past k = 16 is
    the tile path's, with the same contract.)"""
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=4, hkv=2, lq=45, lk=45, d=40)
    q, k = q.to(DEVICE), k.to(DEVICE)
    spec = spec if spec.key_padding is None else replace(spec, key_padding=spec.key_padding.to(DEVICE))
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


def test_fused_topk_ties_prefer_lower_keys_and_large_k_uses_tiles(rng):
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


PACKED_SHAPES = {"gqa2_L37": (4, 2, 37), "gqa3_L11": (6, 2, 11), "gqa7_L9": (7, 1, 9)}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(PACKED_SHAPES))
def test_packed_gqa_programs_match_float64(shape, mask, rng):
    """Row statistics and the digest with each group of query heads packed into one program
    (group sizes 2, 3 and 7: packed blocks mix heads and straddle positions unevenly)."""
    hq, hkv, length = PACKED_SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], torch.float32, hq=hq, hkv=hkv, lq=length, lk=length)
    q, k = q.to(DEVICE), k.to(DEVICE)
    spec = spec if spec.key_padding is None else replace(spec, key_padding=spec.key_padding.to(DEVICE))
    lse_t, ent_t = rowstats.row_stats_torch(q, k, spec)
    lse_k, ent_k = rowstats.row_stats_triton(q, k, spec, pack_gqa=True, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    within_rule(lse_k, lse_t, lse64, "packed lse", floor)
    within_rule(ent_k, ent_t, dense_entropy(p, sinks), "packed entropy", floor=2e-5)
    sq, sk = min(5, length), min(7, length)
    got = pooled.digest_triton(
        q, k, spec, lse_k, pooled_size=(sq, sk), received=True, terms=True, pack_gqa=True, **BLOCKS
    )
    within_rule(
        got["pooled"],
        pooled.pooled_torch(q, k, spec, lse_t, sq, sk),
        dense_pooled(p, sq, sk),
        "pooled",
        floor,
    )
    within_rule(got["received"], pooled.received_torch(q, k, spec, lse_t), p.sum(1), "received", 2e-5)
    terms64 = headstats.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(got["terms"], headstats.row_terms_torch(q, k, spec, lse_t), terms64, "terms", floor=5e-5)


def test_gqa_packing_is_chosen_where_it_saves_programs():
    assert triton_common.gqa_pack(4, 20, 64) == 4  # 4 half-empty blocks become 2 full ones
    assert triton_common.gqa_pack(4, 4096, 64) == 1  # long rows: same K reads either way
    assert triton_common.gqa_pack(1, 5, 64) == 1  # nothing to pack
    assert triton_common.gqa_pack(4, 4096, 64, requested=True) == 4
    assert triton_common.gqa_pack(4, 20, 64, requested=False) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launchers' own block sizes (`loop_config`: 32-key blocks for
    d = 256 in fp32), L = 70 so that 64-row blocks are uneven; every kernel against float64."""
    q, k, spec, p, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    within_rule(lse_k, lse_t, rowstats.row_stats_torch(q.double(), k.double(), spec)[0], "lse", floor)
    tile = tiles.probs_tile_triton(q, k, spec, lse_k, 3, range(70), range(70))
    within_rule(tile, tiles.probs_tile_torch(q, k, spec, lse_t, 3, range(70), range(70)), p[3], "tile", floor)
    got = pooled.digest_triton(q, k, spec, lse_k, pooled_size=(9, 11), received=True)
    within_rule(
        got["pooled"], pooled.pooled_torch(q, k, spec, lse_t, 9, 11), dense_pooled(p, 9, 11), "pooled", floor
    )
    within_rule(got["received"], pooled.received_torch(q, k, spec, lse_t), p.sum(1), "received", 2e-5)
    _, val = topk.topk_triton(q, k, spec, lse_k, 2, 8, range(70))
    _, val_t = topk.topk_torch(q, k, spec, lse_t, 2, 8, range(70))
    within_rule(val, val_t, p[2].sort(dim=1, descending=True).values[:, :8], "top-k", floor)
    view = neuron.neuron_triton(q, k, spec, lse_k, 1, 69, range(70))
    within_rule(
        view.probs, neuron.neuron_torch(q, k, spec, lse_t, 1, 69, range(70)).probs, p[1, 69], "neuron", floor
    )


def test_a_kernel_that_fails_while_running_is_not_hidden(monkeypatch, rng):
    """Out of memory is the caller's to see (the service maps it to RESOURCE_EXHAUSTED), not a
    reason to switch backends for good."""
    from attnscope.kernels import backend

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    q, k, spec, _, _ = random_case(rng, MASKS["causal"], torch.float32)
    monkeypatch.setattr(backend, "backend_name", lambda device: "triton")
    monkeypatch.setattr(rowstats, "row_stats_triton", out_of_memory)
    monkeypatch.setattr(backend, "_broken", None)
    with pytest.raises(torch.OutOfMemoryError):
        backend.row_stats(q, k, spec)
    assert backend._broken is None
