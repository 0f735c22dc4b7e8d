"""attnscope: exact attention views (head, model, neuron) for inputs of any length.

Public API (a contract, see DESIGN.md):

    ex = attnscope.Extractor.from_pretrained()      # bundled all-MiniLM-L6-v2
    tr = ex.trace("The doctor asked the nurse a question.")
    tr.attention(layer, head), tr.pooled(256), tr.received(), tr.topk(k, layer, head),
    tr.neuron(layer, head, query), tr.head_stats()
"""

from attnscope.extract import Extractor, Trace
from attnscope.kernels import HEAD_STAT_NAMES, MaskSpec, NeuronView
from attnscope.service import Client, views
from attnscope.web.notebook import head_view, model_view, neuron_view, show

__all__ = [
    "HEAD_STAT_NAMES",
    "Client",
    "Extractor",
    "MaskSpec",
    "NeuronView",
    "Trace",
    "head_view",
    "model_view",
    "neuron_view",
    "show",
    "views",
]
__version__ = "0.1.0"
