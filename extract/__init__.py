"""Capture of Q/K inside transformers models (`capture`), `Extractor`, `Trace`, and `DenseTrace`
(the same views over attention tensors a user already has), the head analysis both share
(`analysis`: head classes, sinks, renormalised traces, rollout, span maps), the fidelity check's report
(`VerifyReport`), and the errors a user may catch: `InputTooLong` (and `EagerTooLong`, the eager
fallback's bound), `IndexOutOfRange`, `MaskMismatch` (the mask attnscope assumes disagrees with
the model's), `VerifyError` (a model that cannot be verified)."""

from .analysis import HEAD_CLASSES
from .capture import IMPLEMENTATION, MaskMismatch, capturing, register
from .default_model import DEFAULT_MODEL_NAME, default_model_path
from .dense import DenseTrace
from .extractor import EagerTooLong, Extractor, InputTooLong
from .selection import IndexOutOfRange
from .trace import KINDS, LayerQK, Trace
from .verify import TOLERANCES, VerifyError, VerifyReport, VerifyRow

__all__ = [
    "DEFAULT_MODEL_NAME",
    "HEAD_CLASSES",
    "IMPLEMENTATION",
    "KINDS",
    "TOLERANCES",
    "DenseTrace",
    "EagerTooLong",
    "Extractor",
    "IndexOutOfRange",
    "InputTooLong",
    "LayerQK",
    "MaskMismatch",
    "Trace",
    "VerifyError",
    "VerifyReport",
    "VerifyRow",
    "capturing",
    "default_model_path",
    "register",
]
