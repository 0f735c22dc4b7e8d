"""Dense float64 references for the tests: the whole L×L matrix, built the obvious way; and the
cases and acceptance rules every kernel family's tests share (tests/kernels/).

Written independently of attnscope's own mask code (explicit loops over the definitions) so
that a shared mistake cannot make both sides agree.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch

from attnscope.kernels import MaskSpec

#: Where the Triton tests run their kernels: the GPU if there is one, else the CPU interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Small tiles for the interpreter, so that L = 37 or 41 spans several uneven blocks.
BLOCKS = {"block_m": 16, "block_n": 16}
#: (Hq, Hkv, Lq, Lk, d) of the interpreter tests: GQA, cross-attention shapes, a wide group.
SHAPES = {
    "gqa2_d24_L37": (4, 2, 37, 37, 24),
    "mha_d80_cross": (2, 2, 23, 41, 80),
    "gqa4_d32_L50": (4, 1, 50, 50, 32),
}

STATS = ("entropy", "previous_token", "self", "first_token", "mean_distance")


def dense_visible(lq, lk, causal=False, window=None, key_real=None):
    key = None if key_real is None else tuple(bool(x) for x in key_real)
    return _dense_visible(lq, lk, causal, window, key).clone()


@lru_cache(maxsize=64)
def _dense_visible(lq, lk, causal, window, key_real):
    # Cached: the loops take seconds at L = 1023, and every family's tests ask for the same masks.
    vis = torch.ones(lq, lk, dtype=torch.bool)
    for i in range(lq):
        for j in range(lk):
            ok = True
            if causal and j > i:
                ok = False
            if window is not None:
                ok = ok and ((i - j) < window if causal else abs(i - j) < window)
            if key_real is not None and not key_real[j]:
                ok = False
            vis[i, j] = ok
    return vis


def dense_probs(q, k, scaling, causal=False, window=None, softcap=None, sinks=None, key_real=None):
    """q [Hq, Lq, D], k [Hkv, Lk, D] -> P [Hq, Lq, Lk] float64 (empty rows are zeros)."""
    q, k = q.double(), k.double()
    group = q.shape[0] // k.shape[0]
    kk = k.repeat_interleave(group, dim=0)
    s = q @ kk.transpose(-1, -2) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    vis = dense_visible(q.shape[1], k.shape[1], causal, window, key_real)
    s = s.masked_fill(~vis, float("-inf"))
    if sinks is not None:
        sink = sinks.double()[:, None, None].expand(-1, s.shape[1], 1)
        p = torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]
    else:
        p = torch.softmax(s, -1)
    return torch.nan_to_num(p, nan=0.0)


def dense_entropy(p, sinks=None):
    """Row entropy [H, Lq] in nats of P (plus the sink's share as an outcome)."""
    terms = torch.where(p > 0, -p * torch.log(p), torch.zeros_like(p)).sum(-1)
    if sinks is not None:
        ps = 1 - p.sum(-1)
        terms = terms + torch.where(ps > 0, -ps * torch.log(ps.clamp_min(1e-300)), torch.zeros_like(ps))
    return terms


def dense_head_stats(p, sinks=None):
    """dict name -> [H] following the definitions in kernels/headstats.py."""
    h, lq, lk = p.shape
    nonempty = p.sum(-1) > 0
    if sinks is not None:
        nonempty = torch.ones(h, lq, dtype=torch.bool)  # the sink is always visible
    ent = dense_entropy(p, sinks)
    out = {name: torch.zeros(h, dtype=torch.float64) for name in STATS}
    for head in range(h):
        rows = [i for i in range(lq) if nonempty[head, i]]
        if not rows:
            continue
        out["entropy"][head] = sum(float(ent[head, i]) for i in rows) / len(rows)
        prev = [i for i in rows if i >= 1]
        if prev:
            out["previous_token"][head] = sum(float(p[head, i, i - 1]) for i in prev if i - 1 < lk) / len(
                prev
            )
        out["self"][head] = sum(float(p[head, i, i]) for i in rows if i < lk) / len(rows)
        out["first_token"][head] = sum(float(p[head, i, 0]) for i in rows) / len(rows)
        out["mean_distance"][head] = sum(
            float(p[head, i, j]) * abs(i - j) for i in rows for j in range(lk)
        ) / len(rows)
    return out


def dense_pooled(p, sq, sk):
    """[H, sq, sk]: mean over each query block's rows of the mass on each key block."""
    h, lq, lk = p.shape
    qe = [(i * lq) // sq for i in range(sq + 1)]
    ke = [(j * lk) // sk for j in range(sk + 1)]
    out = torch.zeros(h, sq, sk, dtype=torch.float64)
    for i in range(sq):
        for j in range(sk):
            out[:, i, j] = p[:, qe[i] : qe[i + 1], ke[j] : ke[j + 1]].sum((1, 2)) / (qe[i + 1] - qe[i])
    return out


def assert_close(actual, expected, atol, what=""):
    actual = torch.as_tensor(actual).double()
    expected = torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN at {torch.isnan(actual).nonzero()[:5].tolist()}"
    err = (actual - expected).abs()
    if err.numel() and float(err.max()) > atol:
        worst = torch.nonzero(err == err.max())[:5].tolist()
        raise AssertionError(f"{what}: max error {float(err.max()):.3g} > {atol} at indices {worst}")


MASKS = {
    "bidirectional": {},
    "causal": {"causal": True},
    "causal_window": {"causal": True, "window": 6},
    "bidirectional_window": {"window": 5},
    "softcap": {"causal": True, "softcap": 2.0},
    "sinks": {"causal": True, "sinks": True},
    "padding": {"padding": True},
    "causal_padding_window": {"causal": True, "window": 9, "padding": True},
}


def random_case(rng, mask, dtype, hq=4, hkv=2, lq=37, lk=37, d=24):
    """Fresh random Q/K (strided, as captured), a MaskSpec and the dense float64 P of the same inputs."""
    q = torch.randn(hq, lq, d, generator=rng, dtype=torch.float64).to(dtype)
    k = torch.randn(hkv, lk, d, generator=rng, dtype=torch.float64).to(dtype)
    # Non-contiguous views, as captured from a model: [L, H, D] storage seen as [H, L, D].
    q = q.transpose(0, 1).contiguous().transpose(0, 1)
    k = k.transpose(0, 1).contiguous().transpose(0, 1)
    opts = dict(mask)
    sinks = torch.randn(hq, generator=rng) if opts.pop("sinks", False) else None
    key_real = None
    if opts.pop("padding", False):
        key_real = torch.ones(lk, dtype=torch.bool)
        key_real[lk - 5 :] = False  # right padding
        key_real[:3] = False  # and some left padding: rows before 3 are empty when causal
    scaling = float(torch.rand((), generator=rng)) * 0.5 + 0.1
    spec = MaskSpec(
        scaling=scaling,
        sinks=sinks,
        key_padding=None if key_real is None else key_real[None],
        **opts,
    )
    p = dense_probs(q, k, scaling, sinks=sinks, key_real=key_real, **opts)
    return q, k, spec, p, sinks


def within_rule(kernel, torch_result, truth, what, floor=2e-6):
    """|kernel - truth| <= 2 |torch - truth| + floor, elementwise maximum; never NaN."""
    kernel, torch_result, truth = (torch.as_tensor(x).double().cpu() for x in (kernel, torch_result, truth))
    assert not kernel.isnan().any(), f"{what}: NaN at {kernel.isnan().nonzero()[:5].tolist()}"
    finite = torch.isfinite(truth)
    assert torch.equal(torch.isfinite(kernel), finite), f"{what}: infinities differ"
    k_err = (kernel - truth)[finite].abs().max() if finite.any() else torch.tensor(0.0)
    t_err = (torch_result - truth)[finite].abs().max() if finite.any() else torch.tensor(0.0)
    assert k_err <= 2 * t_err + floor, (
        f"{what}: kernel error {k_err:.3g} > 2 × torch error {t_err:.3g} + {floor}"
    )


def rounding_floor(q: torch.Tensor, k: torch.Tensor, scaling: float) -> float:
    """Absolute float32 rounding error to allow in a probability <= 1 at these inputs' logit scale.

    Every float32 rounding of a logit's dot product moves its probability by about
    ``p·2^-24·scaling·Σ|q_i·k_i|``; kernels and the torch backend accumulate in different orders
    (tile shapes, base 2 versus natural units), so the allowance is 4 such steps, far below the
    worst-case bound ``d·2^-24·Σ|q_i·k_i|``. With unit-variance inputs, d = 256 and scaling up to
    0.6 this reaches ~1e-5, where a fixed 1e-6 would fail on rounding alone.
    """
    group = q.shape[0] // k.shape[0]
    kk = k.double().abs().repeat_interleave(group, dim=0)
    magnitude = scaling * float((q.double().abs() @ kk.transpose(-1, -2)).max())
    return max(1e-6, 4 * 2.0**-24 * magnitude)


def on_device(q, k, spec, device=DEVICE):
    """q, k and spec (its key padding and sinks) on `device`."""
    moved = {
        name: getattr(spec, name).to(device)
        for name in ("key_padding", "sinks")
        if getattr(spec, name) is not None
    }
    return q.to(device), k.to(device), replace(spec, **moved)
