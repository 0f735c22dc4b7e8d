"""The digest (kernels/digest.py): one pass over P for pooled maps and received attention (with
the head statistics' row terms, whose own tests are in test_headstats.py), and the block layout
and reduction of kernels/pooled.py.

Torch twin against a dense float64 recompute; the Triton kernel (interpreted on the CPU) against
float64 and the torch twin under the 2× error rule (tests/reference.py), GQA-packed or not,
repeated (atomics); a chosen set of query heads costs those heads only and equals their rows of
the full pass; the GPU at every head dim and dtype, and at L = 131,072.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from attnscope.kernels import (
    MaskSpec,
    backend,
    digest,
    pooled,
    pooled_torch,
    received_torch,
    row_stats_torch,
    rowstats,
    triton_common,
)

from reference import (
    BLOCKS,
    DEVICE,
    MASKS,
    SHAPES,
    assert_close,
    dense_pooled,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
TOL = {torch.float32: 5e-6, torch.float64: 1e-7}  # float32: exp(s - lse) carries |s|·eps
KERNELS = Path(digest.__file__).resolve().parent


# ---- block layout and imports --------------------------------------------------------------------
def test_blocks_cover_every_position_and_differ_by_at_most_one():
    for length, size in ((37, 5), (37, 37), (41, 1), (1023, 256)):
        blocks = pooled.block_of(length, size)
        sizes = pooled.block_sizes(length, size)
        assert torch.equal(torch.bincount(blocks, minlength=size), sizes)
        assert int(sizes.sum()) == length and int(sizes.max() - sizes.min()) <= 1
        assert bool((blocks[1:] >= blocks[:-1]).all())
    with pytest.raises(ValueError, match=r"block count must be in \[1, 5\], got 6"):
        pooled.block_of(5, 6)


def test_add_blocks_and_finish_blocks_give_the_dense_pooled_map(rng):
    p = torch.rand(3, 23, 41, generator=rng, dtype=torch.float64)
    acc = torch.zeros(3, 6, 9, dtype=torch.float64)
    qb, kb = pooled.block_of(23, 6), pooled.block_of(41, 9)
    for q0, q1, k0, k1 in ((0, 10, 0, 41), (10, 23, 0, 20), (10, 23, 20, 41)):  # chunks, as digest_torch
        pooled.add_blocks(acc, p[:, q0:q1, k0:k1], qb[q0:q1], kb[k0:k1])
    got = pooled.finish_blocks(acc, 23, 6)
    assert got.dtype == torch.float32
    assert_close(got, dense_pooled(p, 6, 9), 1e-6, "pooled from blocks")  # float32 of values < 8


def _imports(module: Path) -> set[str]:
    """Sibling kernel modules `module` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("length,size", [(48, 12), (53, 13), (37, 37), (300, 256)])
def test_key_block_sums_equal_a_scatter_into_blocks(length, size, rng):
    """Reshape-and-sum (one block size), identity (a block per key) and index_add (others), at
    chunk edges inside blocks, on block edges and across the whole axis."""
    blocks = pooled.block_of(length, size)
    for k0, k1 in ((0, length), (5, length - 3), (0, 1), (length // 2, length // 2 + 7), (11, 12)):
        e = torch.rand(3, 4, k1 - k0, generator=rng, dtype=torch.float64)
        expected = torch.zeros(3, 4, size, dtype=torch.float64).index_add_(2, blocks[k0:k1], e)
        first, sums = pooled.key_block_sums(e, k0, length, size)
        assert first == int(blocks[k0]) and sums.shape[2] == int(blocks[k1 - 1]) - first + 1
        assert_close(sums, expected[..., first : first + sums.shape[2]], 1e-12, f"keys {k0}:{k1}")


def test_query_chunks_stay_within_the_budget_and_follow_the_causal_rows():
    from attnscope.kernels import scores

    q, k = torch.zeros(3, 200, 8), torch.zeros(3, 200, 8)
    for spec in (MaskSpec(scaling=1.0, causal=True), MaskSpec(scaling=1.0), MaskSpec(scaling=1.0, window=9)):
        chunks = list(scores.query_chunks(q, k, spec, budget=3 * 1000, align=4))
        assert [c[0] for c in chunks] == [0] + [c[1] for c in chunks[:-1]] and chunks[-1][1] == 200
        for q0, q1, k0, k1 in chunks:
            assert 3 * (q1 - q0) * (k1 - k0) <= 3 * 1000 and (k0, k1) == spec.key_range(q0, q1, 200)
            assert (q1 - q0) % 4 == 0 or q1 == 200
        if spec.causal:  # short rows first: the first chunk takes more rows than the last
            assert chunks[0][1] - chunks[0][0] > chunks[-1][1] - chunks[-1][0]


def test_imports_point_from_the_fused_pass_to_the_families_it_fuses():
    graph = {path.stem: _imports(path) for path in KERNELS.glob("*.py")}
    assert {"pooled", "headstats"} <= graph["digest"]
    assert "digest" not in graph["pooled"] | graph["headstats"]
    assert "pooled" not in graph["headstats"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ())
        )

    cycles = sorted(m for m in graph if m != "__init__" and reaches(m, m, {m}))
    assert not cycles, f"import cycles through {cycles}"


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_torch_matches_dense_float64(mask, dtype, rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype)
    tol = TOL[dtype]
    lse, _ = row_stats_torch(q, k, spec)
    for sq, sk in ((5, 7), (37, 37), (1, 1), (13, 36)):
        assert_close(
            pooled_torch(q, k, spec, lse, sq, sk), dense_pooled(p, sq, sk), tol * 10, f"pooled {sq}x{sk}"
        )
    assert_close(received_torch(q, k, spec, lse), p.sum(1), tol * 40, "received")


def test_torch_cross_shapes_and_uneven_blocks(rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, {}, torch.float64, hq=3, hkv=3, lq=23, lk=41, d=40)
    lse, _ = row_stats_torch(q, k, spec)
    assert_close(pooled_torch(q, k, spec, lse, 6, 9), dense_pooled(p, 6, 9), 1e-7, "pooled cross")
    assert_close(received_torch(q, k, spec, lse), p.sum(1), 1e-6, "received cross")


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
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    for sq, sk in ((5, 7), (lq, lk), (min(13, lq), min(36, lk)), (1, 1)):
        got = digest.digest_triton(
            q, k, spec, lse_k, pooled_size=(sq, sk), received=True, terms=True, **BLOCKS
        )
        within_rule(
            got["pooled"],
            digest.pooled_torch(q, k, spec, lse_t, sq, sk),
            dense_pooled(p, sq, sk),
            f"pooled {sq}x{sk}",
            floor,
        )
        within_rule(got["received"], digest.received_torch(q, k, spec, lse_t), p.sum(1), "received", 2e-5)
    # The row terms of the fused pass (pooled and received beside them).
    terms_t = digest.row_terms_torch(q, k, spec, lse_t)
    terms64 = digest.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(got["terms"], terms_t, terms64, "head-stat row terms", floor=5e-5)


@needs_triton
def test_triton_repeated_runs_agree(rng):
    """Atomics may reorder float additions, but never lose or double an update (races)."""
    q, k, spec, _, _ = random_case(rng, MASKS["causal_window"], torch.float32, lq=50, lk=50)
    q, k = q.to(DEVICE), k.to(DEVICE)
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    first = digest.digest_triton(q, k, spec, lse, pooled_size=(7, 9), received=True, **BLOCKS)
    for _ in range(3):
        again = digest.digest_triton(q, k, spec, lse, pooled_size=(7, 9), received=True, **BLOCKS)
        assert_close(again["pooled"], first["pooled"], 1e-6, "pooled repeat")
        assert_close(again["received"], first["received"], 1e-5, "received repeat")


@needs_triton
def test_triton_fully_masked_rows_are_not_nan(rng):
    q = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    k = torch.randn(2, 20, 32, generator=rng).to(DEVICE)
    real = torch.ones(1, 20, dtype=torch.bool)
    real[0, :5] = False
    spec = MaskSpec(scaling=0.2, causal=True, key_padding=real.to(DEVICE))
    lse, _ = rowstats.row_stats_triton(q, k, spec, **BLOCKS)
    got = digest.digest_triton(q, k, spec, lse, pooled_size=(4, 4), received=True, terms=True, **BLOCKS)
    assert not any(t.isnan().any() for t in got.values())


PACKED_SHAPES = {"gqa2_L37": (4, 2, 37), "gqa3_L11": (6, 2, 11), "gqa7_L9": (7, 1, 9)}


@needs_triton
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(PACKED_SHAPES))
def test_triton_packed_gqa_programs_match_float64(shape, mask, rng):
    """Each group of query heads packed into one program (group sizes 2, 3 and 7: packed blocks
    mix heads and straddle positions unevenly)."""
    hq, hkv, length = PACKED_SHAPES[shape]
    q, k, spec, p, _ = random_case(rng, MASKS[mask], torch.float32, hq=hq, hkv=hkv, lq=length, lk=length)
    q, k, spec = on_device(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec, pack_gqa=True, **BLOCKS)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    sq, sk = min(5, length), min(7, length)
    got = digest.digest_triton(
        q, k, spec, lse_k, pooled_size=(sq, sk), received=True, terms=True, pack_gqa=True, **BLOCKS
    )
    within_rule(
        got["pooled"],
        digest.pooled_torch(q, k, spec, lse_t, sq, sk),
        dense_pooled(p, sq, sk),
        "pooled",
        floor,
    )
    within_rule(got["received"], digest.received_torch(q, k, spec, lse_t), p.sum(1), "received", 2e-5)
    terms64 = digest.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(got["terms"], digest.row_terms_torch(q, k, spec, lse_t), terms64, "terms", floor=5e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [96, 128, 256])
def test_triton_wide_heads_with_default_launch_shapes(d, dtype, rng):
    """Head dims 96-256 with the launcher's own block sizes (`loop_config`), L = 70."""
    q, k, spec, p, _ = random_case(rng, MASKS["causal_padding_window"], dtype, hq=4, hkv=2, lq=70, lk=70, d=d)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    got = digest.digest_triton(q, k, spec, lse_k, pooled_size=(9, 11), received=True)
    within_rule(
        got["pooled"], digest.pooled_torch(q, k, spec, lse_t, 9, 11), dense_pooled(p, 9, 11), "pooled", floor
    )
    within_rule(got["received"], digest.received_torch(q, k, spec, lse_t), p.sum(1), "received", 2e-5)


# ---- chosen query heads (torch and Triton) -------------------------------------------------------
#: selection -> whether it is made of whole GQA groups (group 2 here), which keep sharing a key head
HEAD_SELECTIONS = {
    "one head of a group": ([3], False),
    "a whole group": ([2, 3], True),
    "a whole group reversed": ([1, 0], True),
    "heads of two groups": ([3, 0], False),
    "one head twice": ([1, 1], False),
    "every head reordered": ([2, 3, 0, 1], True),
}
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("selection", list(HEAD_SELECTIONS))
def test_chosen_heads_cost_those_heads_and_equal_the_full_rows(selection, which, rng, monkeypatch):
    heads, whole_groups = HEAD_SELECTIONS[selection]
    monkeypatch.setenv("ATTNSCOPE_BACKEND", which)
    q, k, spec, _, _ = random_case(rng, MASKS["sinks"], torch.float32, hq=4, hkv=2)
    q, k, spec = on_device(q, k, spec)
    lse, _ = backend.row_stats(q, k, spec)
    everything = dict(pooled_size=(5, 7), received=True, terms=True)
    full = backend.digest(q, k, spec, lse, **everything)
    launched = []
    real = getattr(digest, f"digest_{which}")

    def spy(q_, k_, spec_, lse_, *args, **kwargs):
        launched.append((q_.shape[0], k_.shape[0], spec_.sinks, lse_.shape[0]))
        return real(q_, k_, spec_, lse_, *args, **kwargs)

    monkeypatch.setattr(digest, f"digest_{which}", spy)
    got = backend.digest(q, k, spec, lse, heads=heads, **everything)
    ((query_heads, key_heads, sinks, lse_rows),) = launched
    assert query_heads == lse_rows == len(heads), "only the chosen query heads are computed"
    assert key_heads == (len(heads) // 2 if whole_groups else len(heads))
    assert torch.equal(sinks, spec.sinks[heads])
    assert_close(got["pooled"], full["pooled"][heads], 1e-6, f"pooled of heads {heads}")
    assert_close(got["received"], full["received"][heads], 1e-5, f"received of heads {heads}")
    assert_close(got["terms"], full["terms"][:, heads], 1e-5, f"terms of heads {heads}")


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
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    got = digest.digest_triton(q, k, spec, lse_k, pooled_size=(256, 256), received=True, terms=True)
    within_rule(
        got["pooled"],
        digest.pooled_torch(q, k, spec, lse_t, 256, 256),
        digest.pooled_torch(q.double(), k.double(), spec, lse64, 256, 256),
        "pooled",
        floor=floor,
    )
    packed = digest.digest_triton(q, k, spec, lse_k, pooled_size=(256, 256), received=True, pack_gqa=True)
    within_rule(packed["pooled"], got["pooled"], got["pooled"], "pooled, GQA-packed", floor=floor)
    within_rule(packed["received"], got["received"], got["received"], "received, GQA-packed", 1e-4)
    within_rule(got["received"], digest.received_torch(q, k, spec, lse_t), p.sum(1), "received", 1e-4)
    terms64 = digest.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(got["terms"], digest.row_terms_torch(q, k, spec, lse_t), terms64, "terms", 1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("which", ["torch", "triton"])
def test_gpu_chosen_heads_equal_the_full_rows(which, rng, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", which)
    q, k, spec, _, _ = random_case(rng, MASKS["sinks"], torch.bfloat16, hq=8, hkv=2, lq=1023, lk=1023, d=64)
    q, k, spec = on_device(q, k, spec, "cuda")
    lse, _ = backend.row_stats(q, k, spec)
    full = backend.digest(q, k, spec, lse, pooled_size=(256, 256), received=True)
    for heads in ([5], [4, 5, 6, 7], [7, 0]):
        got = backend.digest(q, k, spec, lse, pooled_size=(256, 256), received=True, heads=heads)
        assert_close(got["pooled"], full["pooled"][heads], 1e-5, f"pooled of heads {heads}")
        assert_close(got["received"], full["received"][heads], 1e-3, f"received of heads {heads}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_at_131072_tokens(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    L, d = 131072, 64
    q = torch.randn(2, L, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, L, d, device="cuda", dtype=dtype, generator=gen)
    spec = MaskSpec(scaling=d**-0.5, causal=True)
    lse, _ = rowstats.row_stats_triton(q, k, spec)
    got = digest.digest_triton(q, k, spec, lse, pooled_size=(256, 256), received=True)
    assert (got["pooled"].sum(-1) - 1).abs().max() < 1e-3  # every pooled row holds its rows' mass
    assert abs(float(got["received"].sum(-1).mean()) / L - 1) < 1e-4
