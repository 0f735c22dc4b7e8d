"""Capture of Q/K inside transformers models (`capture`), `Extractor`, `Trace`, and `DenseTrace`
(the same views over attention tensors a user already has)."""

from .capture import IMPLEMENTATION, capturing, register
from .default_model import DEFAULT_MODEL_NAME, default_model_path
from .dense import DenseTrace
from .extractor import Extractor, InputTooLong
from .selection import IndexOutOfRange
from .trace import KINDS, LayerQK, Trace

__all__ = [
    "DEFAULT_MODEL_NAME",
    "IMPLEMENTATION",
    "KINDS",
    "DenseTrace",
    "Extractor",
    "IndexOutOfRange",
    "InputTooLong",
    "LayerQK",
    "Trace",
    "capturing",
    "default_model_path",
    "register",
]
