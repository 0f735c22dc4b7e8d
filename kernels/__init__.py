"""Exact attention views from captured Q and K, one module per kernel family.

Each family module holds the chunked torch implementation (``*_torch``), the reference that runs
everywhere; the Triton kernels that must match it live beside it. Shared facts: `masking`
(the mask description), `scores` (numerics) and `facts` (torch-free: statistic names, defaults).
`digest` fuses `pooled` and `headstats` into one pass over P; imports point from the fused pass
to the families it fuses, never back.

Names below are imported on first use, so that `attnscope.kernels.facts` is readable without
loading torch (the light client reads it).
"""

from __future__ import annotations

import importlib

# name -> the family module that defines it (a name mapped to None is a module of this package).
_WHERE = {
    "HEAD_STAT_NAMES": "facts",
    "HEAD_STATS": "facts",
    "DEFAULT_POOLED_SIZE": "facts",
    "MaskSpec": "masking",
    "NeuronView": "neuron",
    "neuron_torch": "neuron",
    "block_of": "pooled",
    "block_sizes": "pooled",
    "row_stats_torch": "rowstats",
    "probs_tile_torch": "tiles",
    "topk_torch": "topk",
    "head_stats_torch": "digest",
    "pooled_torch": "digest",
    "received_torch": "digest",
    "backend": None,
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_WHERE[name] or name}")
    value = module if _WHERE[name] is None else getattr(module, name)
    globals()[name] = value
    return value
