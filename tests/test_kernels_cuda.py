"""GPU proof of the Triton kernels (`pytest -m cuda` on the GPU machine; skipped without CUDA).

The interpreter runs the same kernels on the CPU in CI, but only the GPU compiles them, uses
tensor cores for fp16/bf16 and exercises 64-bit offsets at L = 131,072.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnscope.kernels import MaskSpec, headstats, neuron, pooled, rowstats, tiles, topk, triton_common

from reference import MASKS, random_case, rounding_floor, within_rule

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(triton_common, "POISON_OUTPUTS", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
def test_gpu_kernels_follow_the_error_rule(d, mask, dtype, rng):
    q, k, spec, p, _ = random_case(rng, MASKS[mask], dtype, hq=8, hkv=2, lq=1023, lk=1023, d=d)
    q, k = q.cuda(), k.cuda()
    if spec.key_padding is not None:
        spec = replace(spec, key_padding=spec.key_padding.cuda())
    floor = rounding_floor(q, k, spec.scaling)
    lse_k, _ = rowstats.row_stats_triton(q, k, spec)
    lse_t, _ = rowstats.row_stats_torch(q, k, spec)
    lse64, _ = rowstats.row_stats_torch(q.double(), k.double(), spec)
    within_rule(lse_k, lse_t, lse64, "lse", floor=1e-5)
    lse_packed, _ = rowstats.row_stats_triton(q, k, spec, pack_gqa=True)
    within_rule(lse_packed, lse_t, lse64, "lse, GQA-packed programs", floor=1e-5)
    for head in (0, 7):
        tile_k = tiles.probs_tile_triton(q, k, spec, lse_k, head, range(1023), range(1023))
        tile_t = tiles.probs_tile_torch(q, k, spec, lse_t, head, range(1023), range(1023))
        within_rule(tile_k, tile_t, p[head], f"tile head {head}", floor=floor)
    digest = pooled.digest_triton(q, k, spec, lse_k, pooled_size=(256, 256), received=True, terms=True)
    within_rule(
        digest["pooled"],
        pooled.pooled_torch(q, k, spec, lse_t, 256, 256),
        pooled.pooled_torch(q.double(), k.double(), spec, lse64, 256, 256),
        "pooled",
        floor=floor,
    )
    packed = pooled.digest_triton(q, k, spec, lse_k, pooled_size=(256, 256), received=True, pack_gqa=True)
    within_rule(packed["pooled"], digest["pooled"], digest["pooled"], "pooled, GQA-packed", floor=floor)
    within_rule(packed["received"], digest["received"], digest["received"], "received, GQA-packed", 1e-4)
    within_rule(digest["received"], pooled.received_torch(q, k, spec, lse_t), p.sum(1), "received", 1e-4)
    terms64 = headstats.row_terms_torch(q.double(), k.double(), spec, lse64)
    within_rule(digest["terms"], headstats.row_terms_torch(q, k, spec, lse_t), terms64, "terms", 1e-3)
    _, val_k = topk.topk_triton(q, k, spec, lse_k, 7, 16, range(1023))
    _, val_t = topk.topk_torch(q, k, spec, lse_t, 7, 16, range(1023))
    within_rule(val_k, val_t, p[7].sort(dim=1, descending=True).values[:, :16], "top-k", floor=floor)
    view_k = neuron.neuron_triton(q, k, spec, lse_k, 5, 1000, range(1023))
    view_t = neuron.neuron_torch(q, k, spec, lse_t, 5, 1000, range(1023))
    within_rule(view_k.probs, view_t.probs, p[5, 1000], "neuron probs", floor=floor)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_row_stats_and_tiles_at_131072_tokens(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    L, d = 131072, 64
    q = torch.randn(2, L, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(1, L, d, device="cuda", dtype=dtype, generator=gen)
    spec = MaskSpec(scaling=d**-0.5, causal=True)
    lse, ent = rowstats.row_stats_triton(q, k, spec)
    assert not lse.isnan().any() and not ent.isnan().any()
    rows = torch.tensor([0, 1, 4095, 65536, L - 2, L - 1], device="cuda")
    for head in range(2):
        s = (q[head, rows].double() @ k[0].double().T) * spec.scaling
        s = s.masked_fill(torch.arange(L, device="cuda")[None, :] > rows[:, None], float("-inf"))
        ref = torch.logsumexp(s, -1)
        assert (lse[head, rows].double() - ref).abs().max() < 1e-4
        p = torch.exp(s - ref[:, None])
        ref_ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
        assert (ent[head, rows].double() - ref_ent).abs().max() < 1e-3
        tile = tiles.probs_tile_triton(q, k, spec, lse, head, range(L - 2, L), range(L - 4096, L))
        assert (tile.double() - p[-2:, L - 4096 :]).abs().max() < 1e-6
        idx, val = topk.topk_triton(q, k, spec, lse, head, 16, range(L - 2, L))
        top = p[-2:].topk(16, dim=1)
        assert (val.double() - top.values).abs().max() < 1e-6
        assert (p[-2:].gather(1, idx) - top.values).abs().max() < 1e-6
    digest = pooled.digest_triton(q, k, spec, lse, pooled_size=(256, 256), received=True)
    assert (digest["pooled"].sum(-1) - 1).abs().max() < 1e-3  # every pooled row holds its rows' mass
    assert abs(float(digest["received"].sum(-1).mean()) / L - 1) < 1e-4
