"""Which implementation computes the views (kernels/backend.py), and what the views are given.

Torch and Triton (interpreted on the CPU): the choice by device and ATTNSCOPE_BACKEND, the
fallback to torch when a kernel cannot be built (and no fallback when one fails while running),
`select_heads`, and Trace.pooled / Trace.received asking the digest for the chosen heads only.
CUDA: Triton is the default there, float64 stays on torch.
"""

from __future__ import annotations

import pytest
import torch

from attnscope.extract.trace import LayerQK, Trace
from attnscope.kernels import MaskSpec, backend, rowstats, triton_common

from reference import MASKS, assert_close, random_case

needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


# ---- choice of backend ---------------------------------------------------------------------------
def test_backend_name_follows_the_environment(monkeypatch):
    monkeypatch.delenv("ATTNSCOPE_BACKEND", raising=False)
    assert backend.backend_name(torch.device("cpu")) == "torch"
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "torch")
    assert backend.backend_name(torch.device("cpu")) == "torch"
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "cuda")
    with pytest.raises(
        ValueError, match=r"ATTNSCOPE_BACKEND must be one of \('torch', 'triton'\), got 'cuda'"
    ):
        backend.backend_name(torch.device("cpu"))


@needs_triton
def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.backend_name(torch.device("cpu")) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA device or TRITON_INTERPRET=1"):
        backend.backend_name(torch.device("cpu"))


def _compile_error():
    import ast

    from triton.compiler.errors import CompilationError

    return CompilationError("kernel source", ast.parse("x = 1").body[0], "unsupported on this GPU")


def _out_of_shared_memory():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(262144, 232448, "shared memory: unsupported on this GPU")


def _failed_pass():
    return RuntimeError("PassManager::run failed: unsupported on this GPU")


@needs_triton
@pytest.mark.parametrize("failure", [_compile_error, _out_of_shared_memory, _failed_pass])
def test_a_kernel_that_cannot_be_built_falls_back_to_torch(failure, monkeypatch, rng):
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


@needs_triton
def test_a_kernel_that_fails_while_running_is_not_hidden(monkeypatch, rng):
    """Out of memory is the caller's to see (the service maps it to RESOURCE_EXHAUSTED), not a
    reason to switch backends for good."""

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    q, k, spec, _, _ = random_case(rng, MASKS["causal"], torch.float32)
    monkeypatch.setattr(backend, "backend_name", lambda device: "triton")
    monkeypatch.setattr(rowstats, "row_stats_triton", out_of_memory)
    monkeypatch.setattr(backend, "_broken", None)
    with pytest.raises(torch.OutOfMemoryError):
        backend.row_stats(q, k, spec)
    assert backend._broken is None


# ---- chosen heads --------------------------------------------------------------------------------
def _gqa_case(rng):
    q, k, spec, _, _ = random_case(rng, MASKS["sinks"], torch.float32, hq=6, hkv=2)  # groups of 3
    lse, _ = rowstats.row_stats_torch(q, k, spec)
    return q, k, spec, lse


def test_select_heads_keeps_what_it_can(rng):
    q, k, spec, lse = _gqa_case(rng)
    assert backend.select_heads(q, k, spec, lse, None) == (q, k, spec, lse)
    assert backend.select_heads(q, k, spec, lse, list(range(6)))[0] is q  # every head: no copy
    # Whole groups: the key heads stay shared, and a contiguous run is a view.
    q2, k2, spec2, lse2 = backend.select_heads(q, k, spec, lse, [3, 4, 5])
    assert q2.shape[0] == lse2.shape[0] == 3 and k2.shape[0] == 1
    assert q2.data_ptr() == q[3].data_ptr() and torch.equal(k2[0], k[1])
    assert torch.equal(spec2.sinks, spec.sinks[3:])
    # Heads of different groups: each gets its key head (group 1).
    q2, k2, spec2, lse2 = backend.select_heads(q, k, spec, lse, [5, 0])
    assert torch.equal(q2, q[[5, 0]]) and torch.equal(k2, k[[1, 0]]) and torch.equal(lse2, lse[[5, 0]])
    assert torch.equal(spec2.sinks, spec.sinks[[5, 0]])
    for bad in ([], [6], [-1]):
        with pytest.raises(ValueError, match=r"query heads must be a non-empty list of ints in \[0, 6\)"):
            backend.select_heads(q, k, spec, lse, bad)


@pytest.mark.parametrize("which", ["torch", pytest.param("triton", marks=needs_triton)])
def test_trace_pooled_and_received_compute_only_the_chosen_heads(which, rng, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", which)
    q, k, spec, _ = _gqa_case(rng)
    tokens = [f"t{i}" for i in range(q.shape[1])]
    trace = Trace({"decoder": [LayerQK(q, k, spec)] * 2}, {"decoder": (tokens, tokens)})
    full_pooled, full_received = trace.pooled(8), trace.received()
    calls = []
    digest = backend.digest

    def spy(q_, k_, spec_, lse_, *args, heads=None, **kwargs):
        calls.append((heads, kwargs))
        return digest(q_, k_, spec_, lse_, *args, heads=heads, **kwargs)

    monkeypatch.setattr(backend, "digest", spy)
    # A size other than the default: a pass over the chosen heads alone.
    one = trace.pooled(8, layers=1, heads=4)
    assert [heads for heads, _ in calls] == [[4]] and not calls[0][1].get("terms")
    assert_close(one, full_pooled[1:, 4:5], 1e-6, "pooled of head 4")
    calls.clear()
    # Received attention (and pooled maps at the default size) come from each layer's one pass.
    two = trace.received(heads=[5, 0])
    assert calls == [], "received attention is kept from the layer's one pass"
    assert_close(two, full_received[:, [5, 0]], 1e-5, "received of heads 5 and 0")
    # Every head chosen, in any order: one pass over every head.
    every = trace.pooled(8, layers=0, heads=[5, 4, 3, 2, 1, 0])
    assert [heads for heads, _ in calls] == [None]
    assert_close(every, full_pooled[:1, [5, 4, 3, 2, 1, 0]], 1e-6, "every head reordered")


@pytest.mark.parametrize("length", [37, 300])  # 300: pooled blocks of one and two positions
def test_trace_views_of_a_layer_cost_one_evaluation_of_its_logits(length, rng, monkeypatch):
    """pooled(); head_stats(); received() (and the row statistics under them) evaluate each
    layer's logits once, and equal the dense float64 recompute."""
    from attnscope.kernels import digest as digest_pass

    from reference import dense_head_stats, dense_pooled

    monkeypatch.setenv("ATTNSCOPE_BACKEND", "torch")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two worker parts, whatever the machine
    layers, tokens = [], [f"t{i}" for i in range(length)]
    dense = []
    for _ in range(2):
        q, k, spec, p, sinks = random_case(
            rng, MASKS["causal_window"], torch.float64, hq=4, hkv=2, lq=length, lk=length
        )
        layers.append(LayerQK(q, k, spec))
        dense.append((p, sinks))
    trace = Trace({"decoder": layers}, {"decoder": (tokens, tokens)})
    rows = []  # query rows of every chunk whose logits were evaluated
    real = digest_pass.masked_logits

    def counted(q_, *args, **kwargs):
        rows.append(q_.shape[1])
        return real(q_, *args, **kwargs)

    monkeypatch.setattr(digest_pass, "masked_logits", counted)
    pooled = trace.pooled()
    stats = trace.head_stats()
    received = trace.received()
    trace.row_stats(1)
    assert sum(rows) == 2 * length, f"each layer's rows evaluated once, got {sum(rows)} rows for 2 × {length}"
    size = min(256, length)
    for layer, (p, sinks) in enumerate(dense):
        assert_close(pooled[layer], dense_pooled(p, size, size), 1e-7, f"pooled of layer {layer}")
        assert_close(received[layer], p.sum(1), 1e-6, f"received of layer {layer}")
        for name, want in dense_head_stats(p, sinks).items():
            assert_close(stats[name][layer], want, 1e-6 * max(1.0, float(want.abs().max())), name)


# ---- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_gpu_uses_triton_except_for_float64(monkeypatch, rng):
    monkeypatch.delenv("ATTNSCOPE_BACKEND", raising=False)
    assert backend.backend_name(torch.device("cuda")) == "triton"
    q, k, spec, _, _ = random_case(rng, MASKS["causal"], torch.float64)
    launched = []
    monkeypatch.setattr(rowstats, "row_stats_triton", lambda *a, **kw: launched.append(1))
    lse, _ = backend.row_stats(q.cuda(), k.cuda(), spec)
    assert not launched and lse.dtype == torch.float64 and lse.is_cuda
    assert_close(lse.cpu(), rowstats.row_stats_torch(q, k, spec)[0], 1e-12, "float64 lse on torch")


@pytest.mark.cuda
def test_gpu_select_heads_stays_on_the_device(rng):
    q, k, spec, lse = (t.cuda() if torch.is_tensor(t) else t for t in _gqa_case(rng))
    spec = MaskSpec(scaling=spec.scaling, causal=spec.causal, sinks=spec.sinks.cuda())
    q2, k2, spec2, lse2 = backend.select_heads(q, k, spec, lse, [5, 0])
    assert q2.is_cuda and k2.is_cuda and spec2.sinks.is_cuda and lse2.is_cuda
