"""The digest's extras (kernels/digest.py, issue 15): token terms for the duplicate-token and
induction head statistics, row-weighted received attention (attention rollout) and span sums
over arbitrary query and key blocks; and the seven-statistic reduction (kernels/headstats.py).

Each against a dense float64 recompute from the same Q and K, built here from the definitions
(explicit loops over token ids and visible pairs): the torch twin, and the Triton kernel
(interpreted on the CPU, small tiles) also under the 2× error rule against the twin; on token
sequences made of repeated random runs (so duplicate and induction keys exist), causal,
bidirectional, windowed, GQA (packed and not), cross-attention shaped (Lq != Lk, other key ids),
every MaskSpec fact, lengths that are not multiples of the block.
"""

from __future__ import annotations

import threading

import pytest
import torch
from test_mask_facts import _case as fact_case

from attnscope.kernels import HEAD_STAT_NAMES, backend, digest, headstats, rowstats, triton_common

from reference import (
    BLOCKS,
    MASKS,
    assert_close,
    dense_entropy,
    dense_head_stats,
    dense_pooled,
    dense_visible,
    on_device,
    random_case,
    rounding_floor,
    within_rule,
)

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
#: (Hq, Hkv, Lq, Lk, d): GQA self-attention, a cross-attention shape, one key head for seven.
SHAPES = {"gqa2_L37": (4, 2, 37, 37, 24), "cross_23x41": (2, 2, 23, 41, 32), "gqa7_L29": (7, 1, 29, 29, 16)}
EXTRA_MASKS = (
    "bidirectional",
    "causal",
    "causal_window",
    "bidirectional_window",
    "sinks",
    "causal_padding_window",
)


def token_runs(rng: torch.Generator, length: int, vocab: int = 40) -> torch.Tensor:
    """[length] int64 ids: random tokens with a random run copied twice further on, and short
    "a b a b" motifs (repeats within a sliding window too)."""
    ids = torch.randint(0, vocab, (length,), generator=rng)
    run = max(3, length // 5)
    for start in (run + 2, 3 * run):
        stop = min(length, start + run)
        ids[start:stop] = ids[: stop - start]
    for start in (1, length // 2, length - 5):
        ids[start + 2 : start + 4] = ids[start : start + 2]
    return ids


def random_blocks(rng: torch.Generator, length: int, count: int, contiguous: bool) -> torch.Tensor:
    """[length] int64 block ids in [-1, count): uneven contiguous spans with gaps, or any ids."""
    if not contiguous:
        return torch.randint(-1, count, (length,), generator=rng)
    cuts = torch.sort(torch.randperm(length - 1, generator=rng)[: count - 1] + 1).values.tolist()
    ids = torch.full((length,), -1, dtype=torch.long)
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, length], strict=True)):
        ids[a:b] = i
    ids[torch.randint(0, length, (3,), generator=rng)] = -1  # a few positions in no span
    return ids


def dense_token_terms(p: torch.Tensor, visible: torch.Tensor, q_ids, k_ids) -> torch.Tensor:
    """[4, H, Lq] (duplicate mass, has-key, induction mass, has-key) from the definitions."""
    h, lq, lk = p.shape
    out = torch.zeros(4, h, lq, dtype=torch.float64)
    qi, ki = q_ids.tolist(), k_ids.tolist()
    for i in range(lq):
        dup = [j for j in range(lk) if visible[i, j] and j != i and ki[j] == qi[i]]
        ind = [j for j in range(1, lk) if visible[i, j] and j - 1 != i and ki[j - 1] == qi[i]]
        for row, keys in ((0, dup), (2, ind)):
            if keys:
                out[row, :, i] = p[:, i, keys].sum(-1)
                out[row + 1, :, i] = 1.0
    return out


def dense_token_stats(token_terms: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for i, name in enumerate(("duplicate_token", "induction")):
        mass, has = token_terms[2 * i], token_terms[2 * i + 1] > 0
        out[name] = torch.tensor(
            [float(mass[h][has[h]].mean()) if has[h].any() else 0.0 for h in range(mass.shape[0])]
        )
    return out


def dense_spans(p: torch.Tensor, q_block, k_block, n_q: int, n_k: int) -> torch.Tensor:
    """[H, n_q, n_k]: one-hot(q_block)ᵀ · P · one-hot(k_block), id -1 in no block."""
    oq = torch.stack([(q_block == i).double() for i in range(n_q)])  # [n_q, Lq]
    ok = torch.stack([(k_block == j).double() for j in range(n_k)])  # [n_k, Lk]
    return oq @ p @ ok.T


def extras_case(rng, mask: str, shape: str, dtype=torch.float32):
    """q, k, spec, dense P, dense visibility [Lq, Lk], and the extras' inputs."""
    hq, hkv, lq, lk, d = SHAPES[shape]
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    real = None if spec.key_padding is None else spec.key_padding[0]
    visible = dense_visible(lq, lk, spec.causal, spec.window, real)
    if lq == lk:
        q_ids = k_ids = token_runs(rng, lq)
    else:  # cross-attention: decoder tokens drawn from the encoder's, so matches exist
        k_ids = token_runs(rng, lk, vocab=12)
        q_ids = token_runs(rng, lq, vocab=12)
    return q, k, spec, p, visible, q_ids, k_ids


def _run_digest(which: str, q, k, spec, lse, **kwargs):
    if which == "triton":
        return digest.digest_triton(q, k, spec, lse.float(), **BLOCKS, **kwargs)
    return digest.digest_torch(q, k, spec, lse, **kwargs)


def _check_all(which, rng, q, k, spec, p, visible, q_ids, k_ids, pack=None):
    """Every extra at once (and the old results beside them) against the dense recompute."""
    hq, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    lse, _ = rowstats.row_stats_torch(q, k, spec)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    weights = torch.randn(hq, lq, generator=rng, dtype=torch.float64).to(q.dtype)
    blocks = (random_blocks(rng, lq, 5, True), random_blocks(rng, lk, 6, True), 5, 6)
    extras = dict(terms=True, token_ids=(q_ids, k_ids), row_weights=weights, blocks=blocks)
    kwargs = {"pack_gqa": pack} if which == "triton" and pack is not None else {}
    got = _run_digest(which, q, k, spec, lse, received=True, pooled_size=(5, 7), **extras, **kwargs)
    assert got["token_terms"].shape == (4, hq, lq) and got["token_terms"].dtype == got["terms"].dtype
    assert got["weighted_received"].dtype == got["span_sums"].dtype == torch.float32
    true_tokens = dense_token_terms(p, visible, q_ids, k_ids)
    assert true_tokens[1].any() and true_tokens[3].any(), "the case has duplicate and induction keys"
    true_wrec = torch.einsum("hq,hqk->hk", weights.double(), p)
    true_spans = dense_spans(p, *blocks)
    floor = max(2e-6, rounding_floor(q, k, spec.scaling))
    errors = {}
    if which == "torch":
        assert_close(got["token_terms"], true_tokens, 5e-6, "token terms")
        assert_close(got["weighted_received"], true_wrec, 4e-5, "weighted received")
        assert_close(got["span_sums"], true_spans, 4e-5, "span sums")
    else:
        twin = digest.digest_torch(
            q, k, spec, lse, terms=True, **{n: extras[n] for n in extras if n != "terms"}
        )
        assert torch.equal(got["token_terms"][1::2], true_tokens[1::2].float()), "has-key flags"
        within_rule(got["token_terms"], twin["token_terms"], true_tokens, "token terms", max(5e-5, floor))
        within_rule(got["weighted_received"], twin["weighted_received"], true_wrec, "weighted received", 1e-4)
        within_rule(got["span_sums"], twin["span_sums"], true_spans, "span sums", 1e-4)
        # The old results of the same pass are unchanged by the extras.
        plain = digest.digest_triton(
            q, k, spec, lse.float(), pooled_size=(5, 7), received=True, terms=True, **BLOCKS, **kwargs
        )
        for name in ("pooled", "received", "terms"):  # terms: the mean distance is in tokens
            assert_close(
                got[name], plain[name], 1e-5 * (lk if name == "terms" else 1), f"{name} beside extras"
            )
    for name, truth in (
        ("token_terms", true_tokens),
        ("weighted_received", true_wrec),
        ("span_sums", true_spans),
    ):
        errors[name] = float((got[name].double() - truth).abs().max())
    print(f"max errors ({which}): {errors}")
    del lse64
    return got


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("mask", EXTRA_MASKS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_extras_match_dense_float64(shape, mask, which, rng):
    q, k, spec, p, visible, q_ids, k_ids = extras_case(rng, mask, shape)
    q, k, spec = on_device(q, k, spec)
    _check_all(which, rng, q, k, spec, p, visible, q_ids, k_ids)


@needs_triton
@pytest.mark.parametrize("mask", ["causal", "bidirectional_window"])
def test_triton_extras_gqa_packed(mask, rng):
    q, k, spec, p, visible, q_ids, k_ids = extras_case(rng, mask, "gqa7_L29")
    q, k, spec = on_device(q, k, spec)
    _check_all("triton", rng, q, k, spec, p, visible, q_ids, k_ids, pack=True)


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize(
    "case", ["chunk_origin", "segments_bidirectional", "groups_window", "bias_causal", "combined"]
)
def test_extras_with_every_mask_fact(case, which, rng):
    q, k, spec, s, p, _ = fact_case(case, rng)
    visible = torch.isfinite(s[0])
    ids = token_runs(rng, q.shape[1])
    _check_all(which, rng, q, k, spec, p, visible, ids, ids)


#: name -> (query blocks, key blocks, scattered ids or spans of consecutive positions)
SPAN_LAYOUTS = {
    "few scattered": (4, 9, False),
    "many scattered": (40, 50, False),
    "token spans": (37, 30, True),
}


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("layout", list(SPAN_LAYOUTS))
def test_spans_with_arbitrary_ids_and_empty_rows(layout, which, rng):
    """Block ids in any order (not spans of consecutive positions), -1 anywhere: few blocks (the
    kernel's one-hot path), more than a tile's worth (its per-pair atomics), and spans of one or
    two positions (one-hot widths past the minimum); empty rows (left padding, causal) add
    nothing, and their token terms are 0."""
    q, k, spec, p, _, q_ids, k_ids = extras_case(rng, "causal_padding_window", "gqa2_L37")
    lse, _ = rowstats.row_stats_torch(q, k, spec)
    assert torch.isneginf(lse).any()
    n_q, n_k, contiguous = SPAN_LAYOUTS[layout]
    blocks = (random_blocks(rng, 37, n_q, contiguous), random_blocks(rng, 37, n_k, contiguous), n_q, n_k)
    got = _run_digest(which, q, k, spec, lse, blocks=blocks, terms=True, token_ids=(q_ids, k_ids))
    truth = dense_spans(p, *blocks)
    within_rule(got["span_sums"], truth.float(), truth, "spans", 1e-5)
    empty = torch.isneginf(lse)
    assert not got["token_terms"][:, empty].any()


def test_seven_statistics_reduce_as_the_dense_definitions(rng, small_chunks):
    q, k, spec, p, visible, q_ids, k_ids = extras_case(rng, "sinks", "gqa2_L37", torch.float64)
    sinks = spec.sinks
    lse, ent = rowstats.row_stats_torch(q, k, spec)
    got = digest.digest_torch(q, k, spec, lse, terms=True, token_ids=(q_ids, k_ids))
    five = headstats.reduce_head_stats(lse, ent, got["terms"])
    seven = headstats.reduce_head_stats(lse, ent, got["terms"], got["token_terms"])
    assert tuple(five) == headstats.POSITION_STAT_NAMES and tuple(seven) == HEAD_STAT_NAMES
    assert len(HEAD_STAT_NAMES) == 7
    for name in five:
        assert torch.equal(five[name], seven[name]), f"{name} is the same with token terms"
    expected = {
        **dense_head_stats(p, sinks),
        **dense_token_stats(dense_token_terms(p, visible, q_ids, k_ids)),
    }
    for name in HEAD_STAT_NAMES:
        assert_close(seven[name], expected[name], 1e-5, name)
    # A head with no has-key row reports 0.
    none = headstats.reduce_head_stats(lse, ent, got["terms"], torch.zeros_like(got["token_terms"]))
    assert not none["duplicate_token"].any() and not none["induction"].any()


@pytest.mark.parametrize("which", BACKENDS)
def test_chosen_heads_take_their_row_weights(which, rng, monkeypatch):
    """heads= with row weights given for the chosen heads (their order), or for every head."""
    monkeypatch.setenv("ATTNSCOPE_BACKEND", which)
    q, k, spec, _, _, q_ids, k_ids = extras_case(rng, "causal", "gqa2_L37")
    q, k, spec = on_device(q, k, spec)
    lse, _ = backend.row_stats(q, k, spec)
    weights = torch.randn(4, 37, generator=rng)
    blocks = (random_blocks(rng, 37, 3, True), random_blocks(rng, 37, 4, True), 3, 4)
    extras = dict(terms=True, token_ids=(q_ids, k_ids), blocks=blocks)
    full = backend.digest(q, k, spec, lse, row_weights=weights, **extras)
    for heads in ([3], [1, 0], [2, 3, 0, 1]):
        for w in (weights[heads], weights) if len(heads) != 4 else (weights[heads],):
            got = backend.digest(q, k, spec, lse, heads=heads, row_weights=w, **extras)
            for name in ("weighted_received", "span_sums"):
                assert_close(got[name], full[name][heads], 1e-5, f"{name} of heads {heads}")
            assert_close(got["token_terms"], full["token_terms"][:, heads], 1e-6, f"token terms of {heads}")
    with pytest.raises(ValueError, match="row_weights must be"):
        backend.digest(q, k, spec, lse, heads=[0, 1], row_weights=weights[:3])


def test_bad_extras_are_refused(rng):
    q, k, spec, _, _, q_ids, k_ids = extras_case(rng, "causal", "cross_23x41")
    lse, _ = rowstats.row_stats_torch(q, k, spec)
    with pytest.raises(ValueError, match="terms=True"):
        digest.digest_torch(q, k, spec, lse, token_ids=(q_ids, k_ids))
    with pytest.raises(ValueError, match="token_ids must be"):
        digest.digest_torch(q, k, spec, lse, terms=True, token_ids=(k_ids, q_ids))
    with pytest.raises(ValueError, match=r"key block ids must be in \[-1, 3\)"):
        digest.digest_torch(
            q, k, spec, lse, blocks=(torch.zeros(23, dtype=torch.long), torch.full((41,), 3), 2, 3)
        )


# ---- one pass: the row statistics from the same evaluation of each chunk's logits (issue 18) -----
#: Lengths no block size divides (53, 23 × 41), and one (48) whose pooled blocks have one size.
ONE_PASS_SHAPES = {
    "gqa2_L53": (4, 2, 53, 53, 24),
    "cross_23x41": (2, 2, 23, 41, 40),
    "mha_L48": (3, 3, 48, 48, 16),
}
ONE_PASS_SIZES = {"gqa2_L53": [(13, 7), (53, 53)], "cross_23x41": [(5, 41)], "mha_L48": [(12, 16), (48, 6)]}


def _one_pass_case(rng, mask: str, shape: str, dtype):
    hq, hkv, lq, lk, d = ONE_PASS_SHAPES[shape]
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d)
    real = None if spec.key_padding is None else spec.key_padding[0]
    visible = dense_visible(lq, lk, spec.causal, spec.window, real)
    q_ids, k_ids = token_runs(rng, lq, vocab=12), token_runs(rng, lk, vocab=12)
    return q, k, spec, p, sinks, visible, q_ids, k_ids


def dense_lse(q, k, spec, visible) -> torch.Tensor:
    """[Hq, Lq] float64 log-sum-exp of each row's visible logits (and its sink), from the definitions."""
    group = q.shape[0] // k.shape[0]
    s = q.double() @ k.double().repeat_interleave(group, 0).transpose(-1, -2) * spec.scaling
    if spec.softcap is not None:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    s = s.masked_fill(~visible, float("-inf"))
    if spec.sinks is not None:
        s = torch.cat([s, spec.sinks.double()[:, None, None].expand(-1, s.shape[1], 1)], -1)
    return torch.logsumexp(s, -1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("shape", list(ONE_PASS_SHAPES))
def test_one_pass_equals_dense_float64_and_the_two_passes(shape, mask, dtype, rng, small_chunks):
    q, k, spec, p, sinks, visible, q_ids, k_ids = _one_pass_case(rng, mask, shape, dtype)
    # Tolerances: results in the compute dtype (lse, entropy, row terms), then float32 results
    # (pooled, received, the statistics), scaled by the largest magnitude where it exceeds 1.
    exact, out32 = (1e-10, 1e-7) if dtype == torch.float64 else (2e-5, 2e-5)

    def close(got, want, tol, what):
        scale = max(1.0, float(torch.as_tensor(want).double().nan_to_num(neginf=0).abs().max()))
        assert_close(
            torch.as_tensor(got).nan_to_num(neginf=0),
            torch.as_tensor(want).nan_to_num(neginf=0),
            tol * scale,
            what,
        )

    lse2, ent2 = rowstats.row_stats_torch(q, k, spec)  # the row statistics' own pass
    for sq, sk in ONE_PASS_SIZES[shape]:
        asked = dict(pooled_size=(sq, sk), received=True, terms=True, token_ids=(q_ids, k_ids))
        one = digest.digest_torch(q, k, spec, None, **asked)
        two = digest.digest_torch(q, k, spec, lse2, **asked)
        true_lse = dense_lse(q, k, spec, visible)
        assert torch.equal(torch.isneginf(one["lse"]), torch.isneginf(true_lse)), "the same empty rows"
        close(one["lse"], true_lse, exact * 10, f"lse {shape} {mask}")
        close(one["entropy"], dense_entropy(p, sinks), exact * 10, f"entropy {shape} {mask}")
        close(one["pooled"], dense_pooled(p, sq, sk), out32, f"pooled {sq}x{sk}")
        close(one["received"], p.sum(1), out32 * 10, "received")
        true_tokens = dense_token_terms(p, visible, q_ids, k_ids)
        close(one["token_terms"], true_tokens, exact, "token terms")
        stats = headstats.reduce_head_stats(one["lse"], one["entropy"], one["terms"], one["token_terms"])
        expected = {**dense_head_stats(p, sinks), **dense_token_stats(true_tokens)}
        for name in HEAD_STAT_NAMES:
            close(stats[name], expected[name], max(out32, 1e-6), name)
        # The same numbers as the row statistics' pass followed by the digest's.
        close(one["lse"], lse2, exact, "lse, two passes")
        close(one["entropy"], ent2, exact, "entropy, two passes")
        for name in ("pooled", "received", "terms", "token_terms"):
            close(
                one[name],
                two[name],
                out32 if name in ("pooled", "received") else exact,
                f"{name}, two passes",
            )


def test_one_pass_is_the_same_on_one_or_two_threads_and_checks_in_every_worker(rng, small_chunks):
    from attnscope.kernels.interrupt import checking

    q, k, spec, p, _, _, q_ids, k_ids = _one_pass_case(rng, "causal", "gqa2_L53", torch.float64)
    asked = dict(pooled_size=(13, 7), received=True, terms=True, token_ids=(q_ids, k_ids))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = digest.digest_torch(q, k, spec, None, **asked)
        torch.set_num_threads(2)  # two parts on two worker threads (scores.map_chunks)
        parts = digest.digest_torch(q, k, spec, None, **asked)
        assert set(parts) == set(alone)
        for name in alone:
            tol = 1e-6 if name in ("pooled", "received") else 1e-12  # float32 results
            assert_close(parts[name].nan_to_num(neginf=0), alone[name].nan_to_num(neginf=0), tol, name)
        assert_close(parts["received"], p.sum(1), 1e-6, "received over two parts (float32)")

        # The caller's check holds in the workers too: it raises there, and the call stops.
        def check():
            if threading.current_thread().name.startswith("attnscope-chunks"):
                raise TimeoutError("deadline")

        with checking(check), pytest.raises(TimeoutError, match="deadline"):
            digest.digest_torch(q, k, spec, None, **asked)
    finally:
        torch.set_num_threads(threads)


@needs_triton
def test_triton_path_gives_the_row_statistics_beside_the_digest(rng, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, spec, p, _ = random_case(rng, MASKS["causal"], torch.float32, hq=2, hkv=1, lq=37, lk=37, d=16)
    got = backend.digest(*on_device(q, k, spec), None, pooled_size=(5, 7), received=True)
    lse, ent = rowstats.row_stats_torch(q, k, spec)
    floor = rounding_floor(q, k, spec.scaling)
    assert_close(got["lse"].cpu(), lse, 1e-5, "lse beside the digest")
    assert_close(got["entropy"].cpu(), ent, 1e-5, "entropy beside the digest")
    assert_close(got["received"].cpu(), p.sum(1), 40 * floor, "received")
    with pytest.raises(ValueError, match="heads must be None"):
        backend.digest(q, k, spec, None, received=True, heads=[0])
