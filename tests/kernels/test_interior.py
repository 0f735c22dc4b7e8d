"""Interior tiles without a mask (issue 18 step 3): with SKIP_INTERIOR, key tiles that every query
of a row block sees skip the visibility test, as FlashAttention's EVEN_M / EVEN_N do.

`triton_common.interior_bounds` is held to the dense definitions of tests/kernels/test_mask_facts.py:
for every row block, the keys it names are visible to every row, and, where no fact makes the
set of such keys other than one interval (groups, key padding), it names all of them. Every
kernel family then gives bit-for-bit the results it gives with the test on every tile (which the
float64 tests of each family hold to the truth), and matches the float64 recompute itself.
Interpreted on the CPU with 16-row tiles, so that interior and edge tiles both occur.
"""

from __future__ import annotations

import pytest
import torch
from test_mask_facts import CASES, _case, _check, _dense_visible, _views

from attnscope.kernels import autotune, triton_common

from reference import DEVICE

pytestmark = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")

#: Cases beyond test_mask_facts.CASES: the plain masks, at lengths over four 16-row blocks.
PLAIN = {
    "bidirectional": (53, {}),
    "causal": (70, {"causal": True}),
    "causal_window": (70, {"causal": True, "window": 40}),
    "long_segments": (70, {"causal": True, "segments": torch.tensor([[0] * 40 + [1] * 30])}),
    "bidirectional_window": (57, {"window": 18}),
    "padding": (45, {"causal": True, "key_padding": torch.arange(45)[None] >= 2}),
}
ALL = {**PLAIN, **CASES}

if triton_common.HAS_TRITON:
    from attnscope.kernels.triton_common import interior_bounds, tl, triton

    # fmt: off
    @triton.jit
    def _bounds_kernel(
        OUT, Lq, Lk, window, chunk, chunk_shift, FACTS, n_facts,
        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_CHUNK: tl.constexpr,
        HAS_SEGMENTS: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
    # fmt: on
        m_start = tl.program_id(0) * BLOCK_M
        m_stop = tl.minimum(m_start + BLOCK_M, Lq)
        lo, hi = interior_bounds(m_start, m_stop, Lk, window, chunk, chunk_shift, FACTS, n_facts,
                                               CAUSAL, HAS_WINDOW, HAS_PADDING, HAS_CHUNK, HAS_SEGMENTS, True)
        tl.store(OUT + 2 * tl.program_id(0), lo + m_start * 0)
        tl.store(OUT + 2 * tl.program_id(0) + 1, hi + m_start * 0)


def _interior_bounds(spec, length: int, block_m: int) -> list[tuple[int, int]]:
    args = triton_common.mask_args(spec, torch.device(DEVICE))
    blocks = triton.cdiv(length, block_m)
    out = torch.zeros(2 * blocks, dtype=torch.int64, device=DEVICE)
    flags = {
        name: args[name] for name in ("CAUSAL", "HAS_WINDOW", "HAS_PADDING", "HAS_CHUNK", "HAS_SEGMENTS")
    }
    scalars = [args[name] for name in ("window", "chunk", "chunk_shift", "facts", "n_facts")]
    _bounds_kernel[(blocks,)](out, length, length, *scalars, **flags, BLOCK_M=block_m)
    return [tuple(pair) for pair in out.view(-1, 2).tolist()]


@pytest.mark.parametrize("block_m", [16, 5])
@pytest.mark.parametrize("case", list(ALL))
def test_interior_bounds_name_the_keys_every_row_of_a_block_sees(case, block_m, rng):
    length, facts = ALL[case]
    _, _, spec, _, _, _ = _case(case, rng, ALL)
    visible = _dense_visible(length, facts)
    one_interval = "groups" not in facts and "key_padding" not in facts
    for block, (lo, hi) in enumerate(_interior_bounds(spec, length, block_m)):
        rows = slice(block * block_m, min(length, (block + 1) * block_m))
        seen_by_all = visible[rows].all(0)
        if lo < hi:
            assert seen_by_all[lo:hi].all(), f"block {block}: keys [{lo}, {hi}) are not all visible"
        if one_interval:
            keys = seen_by_all.nonzero().flatten().tolist()
            assert keys == list(range(keys[0], keys[-1] + 1)) if keys else True, "not one interval"
            expected = (keys[0], keys[-1] + 1) if keys else None
            assert (lo, hi) == expected if keys else lo >= hi, f"block {block}: [{lo}, {hi}) != {expected}"
        if "key_padding" in facts:
            assert lo >= hi, "key padding is per key: no tile is interior"
    if case in ("bidirectional", "causal", "causal_window", "long_segments") and block_m == 16:
        tiles = [t for lo, hi in _interior_bounds(spec, length, 16) for t in range(0, hi - 15, 16) if t >= lo]
        assert tiles, "some 16-key tile is interior (the fast path is exercised below)"


@pytest.mark.parametrize(
    "case", ["causal", "causal_window", "bidirectional_window", "long_segments", "groups_window", "combined"]
)
def test_every_family_gives_the_same_bits_with_interior_tiles_unmasked(case, rng, monkeypatch):
    q, k, spec, s, p, lse = _case(case, rng, ALL)
    on = (q.to(DEVICE), k.to(DEVICE), spec, lse.to(DEVICE))
    pack = case == "groups_window"
    monkeypatch.delenv(autotune.SKIP_INTERIOR_ENV, raising=False)
    masked = _views("triton", *on, pack)
    monkeypatch.setenv(autotune.SKIP_INTERIOR_ENV, "1")
    assert autotune.loop_config(16, torch.float32)[2]["SKIP_INTERIOR"]
    fast = _views("triton", *on, pack)
    for name, value in masked.items():
        for x, y in zip(_tensors(value), _tensors(fast[name]), strict=True):
            assert torch.equal(x.cpu(), y.cpu()), f"{name}: interior tiles unmasked change the values"
    _check(fast, s, p, lse, q, k)


def _tensors(value):
    """The tensors of a view's result (a tensor, a tuple of them, a list of neuron views)."""
    if torch.is_tensor(value):
        yield value
    else:
        for item in value:
            yield from _tensors(item)
