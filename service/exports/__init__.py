"""Exports of a trace's views: .npz / .safetensors files (`files`), the standalone HTML viewer
(`standalone`), and the notebook functions (`notebook`: `show` and bertviz's `head_view`,
`model_view`, `neuron_view`)."""

from .files import FORMATS, SCHEMA, export_file, export_views, load, write
from .notebook import head_view, model_view, neuron_view, show
from .standalone import embedded_data, standalone_html, trace_fetch, trace_standalone

__all__ = [
    "FORMATS",
    "SCHEMA",
    "embedded_data",
    "export_file",
    "export_views",
    "head_view",
    "load",
    "model_view",
    "neuron_view",
    "show",
    "standalone_html",
    "trace_fetch",
    "trace_standalone",
    "write",
]
