"""The chunked torch backend against a dense float64 recompute from the same Q and K."""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import (
    MaskSpec,
    head_stats_torch,
    neuron_torch,
    pooled_torch,
    probs_tile_torch,
    received_torch,
    row_stats_torch,
    topk_torch,
)

from reference import MASKS, assert_close, dense_entropy, dense_head_stats, dense_pooled, random_case

# float64 inputs: views come back as float32, so the floor is float32 rounding of values <= 1.
TOL = {torch.float32: 5e-6, torch.float64: 1e-7}  # float32: exp(s - lse) carries |s|·eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_every_view_matches_dense_float64(mask, dtype, rng, small_chunks):
    q, k, spec, p, sinks = random_case(rng, MASKS[mask], dtype)
    tol = TOL[dtype]
    lse, ent = row_stats_torch(q, k, spec)
    assert not torch.isnan(lse).any() and not torch.isnan(ent).any()
    assert_close(ent, dense_entropy(p, sinks), 20 * tol, "entropy")
    for head in range(q.shape[0]):
        tile = probs_tile_torch(q, k, spec, lse, head, range(q.shape[1]), range(k.shape[1]))
        assert_close(tile, p[head], tol, f"tile head {head}")
    sub = probs_tile_torch(q, k, spec, lse, 3, range(5, 30), range(11, 36))
    assert_close(sub, p[3, 5:30, 11:36], tol, "sub-tile")
    for sq, sk in ((5, 7), (37, 37), (1, 1), (13, 36)):
        assert_close(
            pooled_torch(q, k, spec, lse, sq, sk), dense_pooled(p, sq, sk), tol * 10, f"pooled {sq}x{sk}"
        )
    assert_close(received_torch(q, k, spec, lse), p.sum(1), tol * 40, "received")
    stats = head_stats_torch(q, k, spec, lse, ent)
    for name, expected in dense_head_stats(p, sinks).items():
        assert_close(stats[name], expected, max(tol * 100, 1e-5), name)


@pytest.mark.parametrize("mask", ["causal", "causal_window", "padding", "bidirectional"])
def test_topk_and_neuron_match_dense(mask, rng, small_chunks):
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
    view = neuron_torch(q, k, spec, lse, head, 20, range(4, 33))
    assert_close(view.q, q[head, 20], 1e-6, "neuron q")
    assert_close(view.k, k[head // 2, 4:33], 1e-6, "neuron k")
    assert_close(view.q_times_k, q[head, 20][None] * k[head // 2, 4:33], 1e-6, "q×k")
    assert_close(view.probs, p[head, 20, 4:33], 1e-7, "neuron probs")
    finite = ~torch.isinf(view.scores)
    assert_close(view.scores[finite], (view.q_times_k.sum(-1) * spec.scaling)[finite], 1e-5, "scores")
    assert bool((view.probs[~finite] == 0).all())


def test_cross_shapes_and_uneven_blocks(rng, small_chunks):
    q, k, spec, p, _ = random_case(rng, {}, torch.float64, hq=3, hkv=3, lq=23, lk=41, d=40)
    lse, _ = row_stats_torch(q, k, spec)
    assert_close(pooled_torch(q, k, spec, lse, 6, 9), dense_pooled(p, 6, 9), 1e-7, "pooled cross")
    assert_close(received_torch(q, k, spec, lse), p.sum(1), 1e-6, "received cross")


def test_empty_rows_are_zero_not_nan(rng):
    q = torch.randn(2, 6, 8, generator=rng)
    k = torch.randn(2, 6, 8, generator=rng)
    spec = MaskSpec(
        scaling=0.3, causal=True, key_padding=torch.tensor([[False, False, True, True, True, True]])
    )
    lse, ent = row_stats_torch(q, k, spec)
    assert torch.isneginf(lse[:, :2]).all() and (ent[:, :2] == 0).all()
    tile = probs_tile_torch(q, k, spec, lse, 0, range(6), range(6))
    assert not tile.isnan().any() and (tile[:2] == 0).all()
    assert_close(tile[2:].sum(-1), torch.ones(4), 1e-6, "non-empty rows sum to one")
