"""attnscope: exact attention views (head, model, neuron) for inputs of any length.

Public API (a contract, see docs/design.md):

    ex = attnscope.Extractor.from_pretrained()      # bundled all-MiniLM-L6-v2
    tr = ex.trace("The doctor asked the nurse a question.")
    tr.attention(layer, head), tr.pooled(256), tr.received(), tr.topk(k, layer, head),
    tr.neuron(layer, head, query), tr.head_stats()

    with attnscope.Client("127.0.0.1:50051") as client:       # a running `attnscope serve`
        client.extract("...", views=[attnscope.views.pooled(64, name="map")])

Each name is imported on first use: ``from attnscope import Client, views`` loads the wire
format and grpc, not torch or transformers.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it (None: the name is a subpackage/module itself).
_WHERE = {
    "Extractor": "attnscope.extract",
    "Trace": "attnscope.extract",
    "DenseTrace": "attnscope.extract",
    "HEAD_STAT_NAMES": "attnscope.kernels.facts",
    "MaskSpec": "attnscope.kernels.masking",
    "NeuronView": "attnscope.kernels.neuron",
    "Client": "attnscope.service.client",
    "views": "attnscope.service.views",
    "head_view": "attnscope.service.exports.notebook",
    "model_view": "attnscope.service.exports.notebook",
    "neuron_view": "attnscope.service.exports.notebook",
    "show": "attnscope.service.exports.notebook",
}
_MODULES = {"views"}

__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
