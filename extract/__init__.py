"""Capture of Q/K inside transformers models (`capture`), `Extractor` and `Trace`."""

from .capture import IMPLEMENTATION, capturing, register
from .default_model import DEFAULT_MODEL_NAME, default_model_path
from .extractor import Extractor
from .trace import KINDS, IndexOutOfRange, LayerQK, Trace

__all__ = [
    "DEFAULT_MODEL_NAME",
    "IMPLEMENTATION",
    "KINDS",
    "Extractor",
    "IndexOutOfRange",
    "LayerQK",
    "Trace",
    "capturing",
    "default_model_path",
    "register",
]
