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
import importlib.util
import os
import sys

if __name__ == "kernels":  # pragma: no cover - only when the repository root is on the import path
    # This folder is the package `attnscope.kernels`. Run from the repository root (`python -m
    # ...`, where Python puts the working directory first on the import path), it would also be
    # found as a top-level `kernels`, shadowing Hugging Face's `kernels` distribution, which
    # transformers (5.25+) imports: hand that import the installed package, or fail as if this
    # folder were absent.
    from importlib import metadata

    try:
        _init = metadata.distribution("kernels").locate_file("kernels/__init__.py")
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels") from None
    _spec = importlib.util.spec_from_file_location(
        "kernels", _init, submodule_search_locations=[os.path.dirname(str(_init))]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)

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
