"""Exact attention views from captured Q and K, one module per kernel family.

Each family module holds the chunked torch implementation (``*_torch``), the reference that runs
everywhere; the Triton kernels that must match it live beside it. Shared facts: `masking`
(the mask description) and `scores` (numerics).
"""

from . import backend
from .headstats import HEAD_STAT_NAMES, head_stats_torch
from .masking import MaskSpec
from .neuron import NeuronView, neuron_torch
from .pooled import block_of, block_sizes, pooled_torch, received_torch
from .rowstats import row_stats_torch
from .tiles import probs_tile_torch
from .topk import topk_torch

__all__ = [
    "HEAD_STAT_NAMES",
    "MaskSpec",
    "NeuronView",
    "backend",
    "block_of",
    "block_sizes",
    "head_stats_torch",
    "neuron_torch",
    "pooled_torch",
    "probs_tile_torch",
    "received_torch",
    "row_stats_torch",
    "topk_torch",
]
