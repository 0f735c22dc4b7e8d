"""Which implementation computes the views: Triton kernels on CUDA, the chunked torch backend
elsewhere (and for float64 traces). ``ATTNSCOPE_BACKEND=torch|triton`` forces one (the tests run the Triton path on the
CPU under ``TRITON_INTERPRET=1``). Every function here takes Q [Hq, Lq, D], K [Hkv, Lk, D], a
`MaskSpec` and, past row statistics, the row log-sum-exp; results stay on Q's device.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import headstats, neuron, pooled, rowstats, tiles, topk
from .masking import MaskSpec
from .triton_common import HAS_TRITON

BACKENDS = ("torch", "triton")


def backend_name(device: torch.device) -> str:
    forced = os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(f"ATTNSCOPE_BACKEND must be one of {BACKENDS}, got {forced!r}")
    if forced == "triton" or (not forced and device.type == "cuda" and HAS_TRITON):
        if not HAS_TRITON:
            raise ValueError("ATTNSCOPE_BACKEND=triton but triton is not installed")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"the triton backend needs a CUDA device or TRITON_INTERPRET=1; tensors are on {device}"
            )
        return "triton"
    return "torch"


def _triton(q: torch.Tensor) -> bool:
    # The kernels accumulate in float32; a float64 trace (used to check models exactly) keeps
    # its float64 accuracy on the torch backend.
    return q.dtype != torch.float64 and backend_name(q.device) == "triton"


_broken: str | None = None  # why the Triton path failed to compile here, once it has


def _is_build_failure(exc: Exception) -> bool:
    """Whether Triton failed to build a kernel for this GPU (rather than to run it): a front-end
    compile error (a Triton version the kernel was not written for), an MLIR pass failure
    (Triton raises a bare RuntimeError for those), too little shared memory or registers, ptxas."""
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors

    named = (getattr(errors, name, None) for name in ("OutOfResources", "PTXASError"))
    kinds = (CompilationError, *(e for e in named if isinstance(e, type)))
    return isinstance(exc, kinds) or (type(exc) is RuntimeError and "PassManager::run failed" in str(exc))


def _run(q: torch.Tensor, triton_fn, torch_fn):
    """Triton where it applies; if a kernel cannot be built on this machine (`_is_build_failure`),
    warn once and use the torch backend from then on, unless ATTNSCOPE_BACKEND=triton asked for
    Triton explicitly. Failures while running (out of memory, bad input) propagate."""
    global _broken
    if _broken is None and _triton(q):
        try:
            return triton_fn()
        except Exception as exc:
            if (
                not _is_build_failure(exc)
                or os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower() == "triton"
            ):
                raise
            _broken = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            warnings.warn(
                f"attnscope's Triton kernels failed to compile ({_broken}); using the torch backend",
                RuntimeWarning,
                stacklevel=3,
            )
    return torch_fn()


def row_stats(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(
        q, lambda: rowstats.row_stats_triton(q, k, spec), lambda: rowstats.row_stats_torch(q, k, spec)
    )


def probs_tile(q, k, spec: MaskSpec, lse, head: int, queries: range, keys: range) -> torch.Tensor:
    args = (q, k, spec, lse, head, queries, keys)
    return _run(q, lambda: tiles.probs_tile_triton(*args), lambda: tiles.probs_tile_torch(*args))


def digest(
    q,
    k,
    spec: MaskSpec,
    lse,
    pooled_size: tuple[int, int] | None = None,
    received: bool = False,
    terms: bool = False,
) -> dict[str, torch.Tensor]:
    """One pass over P for any of "pooled", "received" and head-statistic "terms" (kernels/pooled.py)."""
    args = (q, k, spec, lse, pooled_size, received, terms)
    return _run(q, lambda: pooled.digest_triton(*args), lambda: pooled.digest_torch(*args))


def pooled_map(q, k, spec: MaskSpec, lse, size_q: int, size_k: int) -> torch.Tensor:
    return digest(q, k, spec, lse, pooled_size=(size_q, size_k))["pooled"]


def received(q, k, spec: MaskSpec, lse) -> torch.Tensor:
    return digest(q, k, spec, lse, received=True)["received"]


def head_stats(q, k, spec: MaskSpec, lse, entropy) -> dict[str, torch.Tensor]:
    return headstats.reduce_head_stats(lse, entropy, digest(q, k, spec, lse, terms=True)["terms"])


def top_k(q, k, spec: MaskSpec, lse, head: int, count: int, queries: range):
    args = (q, k, spec, lse, head, count, queries)
    return _run(q, lambda: topk.topk_triton(*args), lambda: topk.topk_torch(*args))


def neuron_view(q, k, spec: MaskSpec, lse, head: int, query: int, keys: range) -> neuron.NeuronView:
    args = (q, k, spec, lse, head, query, keys)
    return _run(q, lambda: neuron.neuron_triton(*args), lambda: neuron.neuron_torch(*args))
