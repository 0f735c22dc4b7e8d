"""The error raised when attnscope cannot reproduce a layer's attention exactly, and how it names
the layer (capture.py's mask check and position_bias.py's bias check both raise it)."""

from __future__ import annotations

import torch


class MaskMismatch(ValueError):
    """The mask (or additive bias) attnscope would assume for a layer differs from what the model
    computes. Raised during the forward pass, so no trace (and no view) of the model is returned.
    """


def layer_name(module: torch.nn.Module, model: torch.nn.Module | None) -> str:
    """``"encoder.block.1.layer.0.SelfAttention: T5Attention (layer_idx=1)"``: the module's path in
    the model (when known), its class and its layer index."""
    name = type(module).__name__
    if getattr(module, "layer_idx", None) is not None:
        name += f" (layer_idx={module.layer_idx})"
    if model is not None:
        path = next((n for n, m in model.named_modules() if m is module), None)
        if path:
            name = f"{path}: {name}"
    return name
