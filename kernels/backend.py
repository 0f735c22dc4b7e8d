"""Which implementation computes the views: Triton kernels on CUDA, the chunked torch backend
elsewhere (and for float64 traces). ``ATTNSCOPE_BACKEND=torch|triton`` forces one (the tests run the Triton path on the
CPU under ``TRITON_INTERPRET=1``). Every function here takes Q [Hq, Lq, D], K [Hkv, Lk, D], a
`MaskSpec` and, past row statistics, the row log-sum-exp; results stay on Q's device.
"""

from __future__ import annotations

import os

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


def row_stats(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return (rowstats.row_stats_triton if _triton(q) else rowstats.row_stats_torch)(q, k, spec)


def probs_tile(q, k, spec: MaskSpec, lse, head: int, queries: range, keys: range) -> torch.Tensor:
    return (tiles.probs_tile_triton if _triton(q) else tiles.probs_tile_torch)(
        q, k, spec, lse, head, queries, keys
    )


def pooled_map(q, k, spec: MaskSpec, lse, size_q: int, size_k: int) -> torch.Tensor:
    if _triton(q):
        return pooled.digest_triton(q, k, spec, lse, pooled_size=(size_q, size_k))["pooled"]
    return pooled.pooled_torch(q, k, spec, lse, size_q, size_k)


def received(q, k, spec: MaskSpec, lse) -> torch.Tensor:
    if _triton(q):
        return pooled.digest_triton(q, k, spec, lse, received=True)["received"]
    return pooled.received_torch(q, k, spec, lse)


def head_stats(q, k, spec: MaskSpec, lse, entropy) -> dict[str, torch.Tensor]:
    if _triton(q):
        terms = pooled.digest_triton(q, k, spec, lse, terms=True)["terms"]
        return headstats.reduce_head_stats(lse, entropy, terms)
    return headstats.head_stats_torch(q, k, spec, lse, entropy)


def top_k(q, k, spec: MaskSpec, lse, head: int, count: int, queries: range):
    return (topk.topk_triton if _triton(q) else topk.topk_torch)(q, k, spec, lse, head, count, queries)


def neuron_view(q, k, spec: MaskSpec, lse, head: int, query: int, keys: range) -> neuron.NeuronView:
    return (neuron.neuron_triton if _triton(q) else neuron.neuron_torch)(q, k, spec, lse, head, query, keys)
