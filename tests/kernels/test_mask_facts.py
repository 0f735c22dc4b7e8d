"""Chunked attention, packed sequences, bidirectional groups and a relative position bias
(kernels/masking.py) in every kernel family and in the torch twin.

Each case builds its L×L logits densely here, in float64, from the definitions (explicit loops,
not `MaskSpec.allowed`), so a mistake shared by the spec and the kernels cannot pass. Every
family is held to that recompute: row statistics, probability tiles, the digest (pooled map,
received attention, head-statistic row terms), top-k and the neuron view; the Triton kernels
interpreted on the CPU with small tiles (L = 37 and 41 span uneven blocks, GQA packed and not),
the torch twin through the backend.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.kernels import MaskSpec, backend, digest, neuron, rowstats, tiles, topk, triton_common

from reference import BLOCKS, DEVICE, assert_close, dense_pooled

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
HQ, HKV, D = 4, 2, 16
#: Absolute tolerances (fp32 inputs) at L <= 53: probabilities and row statistics, then sums over
#: a row or a column. Longer rows scale the sums' allowance: received attention and entropy by
#: L / 53 (one rounding per term), the mean distance, a sum of p · |q - k|, by (L / 53)^2.
TOL, TOL_SUM = 1e-5, 5e-5


def _segments(*lengths: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)])[None]


def _groups(length: int, *spans: tuple[int, int, int]) -> torch.Tensor:
    """[1, length] group ids: each (start, stop, id) span carries its id, the rest 0."""
    g = torch.zeros(length, dtype=torch.long)
    for start, stop, gid in spans:
        g[start:stop] = gid
    return g[None]


#: name -> (length, MaskSpec facts beyond scaling; "bias" True = a random [Hq, 2L - 1] table).
CASES = {
    "chunk": (37, {"causal": True, "chunk": 8}),
    "chunk_origin": (41, {"causal": True, "chunk": 7, "chunk_start": torch.tensor([3])}),
    "chunk_bidirectional": (37, {"chunk": 6, "chunk_start": torch.tensor([4])}),
    "segments": (37, {"causal": True, "segments": _segments(13, 11, 13)}),
    "segments_bidirectional": (41, {"segments": _segments(15, 9, 17)}),
    # Groups reaching past a row block's causal / window key range (16-key blocks): the image-like
    # group's first rows see keys two blocks on, the window's last rows a prefix two blocks back.
    "groups": (45, {"causal": True, "groups": _groups(45, (0, 7, 1), (12, 35, 2))}),
    "groups_window": (53, {"causal": True, "window": 4, "groups": _groups(53, (3, 40, 1), (44, 50, 2))}),
    "bias_causal": (37, {"causal": True, "bias": True}),
    "bias_bidirectional": (41, {"bias": True}),
    "combined": (
        41,
        {
            "causal": True,
            "window": 10,
            "softcap": 3.0,
            "chunk": 8,
            "chunk_start": torch.tensor([2]),
            "segments": _segments(23, 18),
            "groups": _groups(41, (0, 5, 1), (12, 17, 2), (23, 27, 3)),
            "bias": True,
            "key_padding": torch.arange(41)[None] < 38,  # right padding: the last 3 keys
        },
    ),
}


def _dense_visible(length: int, facts: dict) -> torch.Tensor:
    """[L, L] bool from the definitions: (causal & window & chunk) | same group, & segment & padding."""
    causal, window, chunk = facts.get("causal", False), facts.get("window"), facts.get("chunk")
    origin = int(facts["chunk_start"][0]) if "chunk_start" in facts else 0
    seg = facts["segments"][0].tolist() if "segments" in facts else None
    grp = facts["groups"][0].tolist() if "groups" in facts else None
    real = facts["key_padding"][0].tolist() if "key_padding" in facts else None
    vis = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            ok = not causal or j <= i
            if window is not None:
                ok = ok and ((i - j) < window if causal else abs(i - j) < window)
            if chunk is not None:
                ok = ok and (i - origin) // chunk == (j - origin) // chunk
            if grp is not None and grp[i] != 0 and grp[i] == grp[j]:
                ok = True
            if seg is not None:
                ok = ok and seg[i] == seg[j]
            if real is not None:
                ok = ok and real[j]
            vis[i, j] = ok
    return vis


def _case(name: str, rng: torch.Generator, cases: dict = CASES):
    """q [HQ, L, D] fp32 (strided, as captured), k [HKV, L, D], the spec, and the dense float64
    logits s [HQ, L, L] (-inf where invisible), P and lse of the same inputs."""
    length, facts = cases[name]
    facts = dict(facts)
    q = torch.randn(length, HQ, D, generator=rng).transpose(0, 1)
    k = torch.randn(length, HKV, D, generator=rng).transpose(0, 1)
    scaling = float(torch.rand((), generator=rng)) * 0.4 + 0.2
    origin = 0
    if facts.pop("bias", False):
        facts["bias"] = torch.randn(HQ, 2 * length - 1, generator=rng) * 2.0
        origin = length - 1
    spec = MaskSpec(scaling=scaling, bias_origin=origin, **facts)
    kk = k.double().repeat_interleave(HQ // HKV, dim=0)
    s = q.double() @ kk.transpose(-1, -2) * scaling
    if "softcap" in facts:
        s = facts["softcap"] * torch.tanh(s / facts["softcap"])
    if "bias" in facts:  # pair (i, j) reads column j - i + origin
        pos = torch.arange(length)
        s += facts["bias"].double()[:, pos[None, :] - pos[:, None] + origin]
    s = s.masked_fill(~_dense_visible(length, facts), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    return q, k, spec, s, p, lse


def _dense_terms(p: torch.Tensor) -> torch.Tensor:
    """Row terms [4, H, L] (previous, self, first, distance) of P, as kernels/headstats.py defines."""
    length = p.shape[1]
    pos = torch.arange(length)
    prev = torch.zeros(p.shape[:2], dtype=p.dtype)
    prev[:, 1:] = p[:, pos[1:], pos[1:] - 1]
    dist = (pos[:, None] - pos[None, :]).abs().double()
    return torch.stack([prev, p[:, pos, pos], p[:, :, 0], (p * dist).sum(-1)])


def _views(which: str, q, k, spec, lse, pack: bool) -> dict:
    """Every family's result on one case: the Triton kernels with small tiles (GQA packed or
    not), or the torch twin through the backend (ATTNSCOPE_BACKEND=torch)."""
    length = q.shape[1]
    lse32 = lse.float()
    out = {}
    if which == "triton":
        out["lse"], out["entropy"] = rowstats.row_stats_triton(q, k, spec, **BLOCKS, pack_gqa=pack)
        got = digest.digest_triton(
            q, k, spec, lse32, (5, 7), received=True, terms=True, **BLOCKS, pack_gqa=pack
        )
        out["tile"] = tiles.probs_tile_triton(
            q, k, spec, lse32, 3, range(2, length), range(1, length), **BLOCKS
        )
        out["topk"] = topk.topk_triton(q, k, spec, lse32, 3, 5, range(1, length))
        out["neuron"] = [
            neuron.neuron_triton(q, k, spec, lse32, 3, row, range(0, length), block_n=16)
            for row in (4, length - 2)
        ]
    else:
        out["lse"], out["entropy"] = backend.row_stats(q, k, spec)
        got = backend.digest(q, k, spec, lse32, (5, 7), received=True, terms=True)
        out["tile"] = backend.probs_tile(q, k, spec, lse32, 3, range(2, length), range(1, length))
        out["topk"] = backend.top_k(q, k, spec, lse32, 3, 5, range(1, length))
        out["neuron"] = [
            backend.neuron_view(q, k, spec, lse32, 3, row, range(0, length)) for row in (4, length - 2)
        ]
    out.update(pooled=got["pooled"], received=got["received"], terms=got["terms"])
    return out


def _check(out: dict, s, p, lse, q, k) -> dict:
    """Each view against the dense float64 recompute; returns the max error of each."""
    length = p.shape[1]
    errors = {}
    longer = max(1.0, length / 53)

    def close(name, actual, expected, tol):
        actual, expected = torch.as_tensor(actual).double().cpu(), torch.as_tensor(expected).double()
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(actual), finite), f"{name}: infinities differ"
        assert_close(actual[finite], expected[finite], tol, name)
        errors[name] = float((actual[finite] - expected[finite]).abs().max()) if finite.any() else 0.0

    ent = torch.where(p > 0, -p * torch.log(p), torch.zeros_like(p)).sum(-1)
    close("lse", out["lse"], lse, TOL)
    close("entropy", out["entropy"], ent, TOL_SUM * longer)
    close("tile", out["tile"], p[3, 2:, 1:], TOL)
    close("pooled", out["pooled"], dense_pooled(p, 5, 7), TOL)
    close("received", out["received"], p.sum(1), TOL_SUM * longer)
    terms = _dense_terms(p)
    close("terms", out["terms"][:3], terms[:3], TOL)
    close("mean distance", out["terms"][3], terms[3], TOL_SUM * longer**2)
    idx, val = out["topk"]
    top = p[3, 1:].topk(5, dim=-1).values
    close("top-k", val, top, TOL)
    idx = idx.cpu()
    assert torch.equal(idx < 0, top == 0), "top-k: rows with fewer visible keys are padded with -1"
    picked = p[3, 1:].gather(1, idx.clamp(min=0))
    close("top-k picks", torch.where(idx < 0, torch.zeros_like(picked), picked), val, TOL)
    for view, row in zip(out["neuron"], (4, length - 2), strict=True):
        close("neuron scores", view.scores, s[3, row], TOL)
        close("neuron probs", view.probs, p[3, row], TOL)
        assert_close(view.q_times_k.cpu(), q[3, row].double()[None] * k[1].double(), 1e-6, "q×k")
    return errors


# ---- Triton (interpreted on the CPU) -------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernels_match_the_dense_recompute(case, rng):
    q, k, spec, s, p, lse = _case(case, rng)
    pack = case.startswith(("bias", "combined", "groups_window"))  # GQA packing: head per row
    on = (q.to(DEVICE), k.to(DEVICE), spec)  # mask_args moves the spec's facts itself
    errors = _check(_views("triton", *on, lse.to(DEVICE), pack), s, p, lse, q, k)
    print(case, {name: f"{err:.2g}" for name, err in errors.items()})
    if case == "combined":  # and the other packing too
        _check(_views("triton", *on, lse.to(DEVICE), not pack), s, p, lse, q, k)


@needs_triton
def test_the_backend_runs_every_fact_on_triton(rng, monkeypatch):
    """With ATTNSCOPE_BACKEND=triton nothing is refused or routed to the torch twin any more."""
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    q, k, spec, _, _, lse = _case("combined", rng)
    assert spec.torch_only() == []
    called = []
    real = rowstats.row_stats_triton
    monkeypatch.setattr(rowstats, "row_stats_triton", lambda *a, **kw: called.append(1) or real(*a, **kw))
    got, _ = backend.row_stats(q.to(DEVICE), k.to(DEVICE), spec)
    got = got.cpu()
    assert called and torch.equal(torch.isneginf(got), torch.isneginf(lse))
    assert_close(got[torch.isfinite(lse)], lse[torch.isfinite(lse)], TOL, "lse through the backend")


@needs_triton
def test_kernels_take_one_sequence_and_self_attention_facts():
    spec = MaskSpec(scaling=0.5, causal=True, segments=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="kernels take one sequence at a time; segments have batch 2"):
        triton_common.mask_args(spec, torch.device("cpu"))
    q, k = torch.randn(2, 9, 16), torch.randn(1, 9, 16)
    spec = MaskSpec(scaling=0.5, causal=True, groups=torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="8 positions, but 9 keys"):
        rowstats.row_stats_triton(q, k, spec)


# ---- torch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_torch_twin_matches_the_dense_recompute(case, rng, monkeypatch, small_chunks):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "torch")
    q, k, spec, s, p, lse = _case(case, rng)
    _check(_views("torch", q, k, spec, lse, False), s, p, lse, q, k)


# ---- CUDA ----------------------------------------------------------------------------------------
#: Every fact at once at L = 333 with the launchers' own block sizes (compiled, not interpreted).
GPU_CASES = {
    "combined_333": (
        333,
        {
            "causal": True,
            "window": 100,
            "chunk": 64,
            "chunk_start": torch.tensor([5]),
            "segments": _segments(150, 183),
            "groups": _groups(333, (0, 40, 1), (60, 130, 2), (150, 170, 3), (200, 290, 4)),
            "bias": True,
        },
    ),
    "bias_bidirectional_333": (333, {"bias": True}),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(GPU_CASES))
@pytest.mark.parametrize("pack", [False, True])
def test_gpu_kernels_match_the_dense_recompute(case, pack, rng):
    q, k, spec, s, p, lse = _case(case, rng, GPU_CASES)
    out = {}
    qc, kc, lc = q.cuda(), k.cuda(), lse.float().cuda()
    out["lse"], out["entropy"] = rowstats.row_stats_triton(qc, kc, spec, pack_gqa=pack)
    got = digest.digest_triton(qc, kc, spec, lc, (5, 7), received=True, terms=True, pack_gqa=pack)
    out.update(pooled=got["pooled"], received=got["received"], terms=got["terms"])
    out["tile"] = tiles.probs_tile_triton(qc, kc, spec, lc, 3, range(2, 333), range(1, 333))
    out["topk"] = topk.topk_triton(qc, kc, spec, lc, 3, 5, range(1, 333))
    out["neuron"] = [neuron.neuron_triton(qc, kc, spec, lc, 3, row, range(0, 333)) for row in (4, 331)]
    print(case, _check(out, s, p, lse, q, k))
