"""Readable token labels for non-text model inputs (image patches), and the fallback `pos i`."""

from __future__ import annotations

import torch

#: Special-token parameters of ViT-style embeddings, in the order the models prepend them
#: (ViT/DINOv2 [CLS]; DeiT [CLS] [DIST]; DINOv2-with-registers [CLS] [REG i]...; CLIP's
#: class_embedding is its [CLS]). SigLIP has none: patches only.
_SPECIALS = (
    ("cls_token", "[CLS]"),
    ("class_embedding", "[CLS]"),
    ("distillation_token", "[DIST]"),
    ("register_tokens", "[REG]"),
)


def positions(n: int) -> list[str]:
    """The labels of a sequence whose layout is unknown."""
    return [f"pos {i}" for i in range(n)]


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    try:
        a, b = value
        return int(a), int(b)
    except (TypeError, ValueError):
        return None


def _vision_config(model: torch.nn.Module):
    config = model.config
    return getattr(config, "vision_config", None) or config


def _embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    """The first module that embeds patches (it has a `patch_embeddings` or `patch_embedding`)."""
    for module in model.modules():
        if hasattr(module, "patch_embeddings") or hasattr(module, "patch_embedding"):
            return module
    return None


def _special_labels(embeddings: torch.nn.Module) -> list[str]:
    labels: list[str] = []
    for attr, label in _SPECIALS:
        value = getattr(embeddings, attr, None)
        if not isinstance(value, torch.Tensor):
            continue
        if attr == "class_embedding" and labels:
            continue
        if attr == "register_tokens":
            count = value.shape[-2] if value.dim() >= 2 else 1
            labels.extend(f"[REG {i}]" for i in range(count))
        elif value.dim() <= 1 or value.shape[-2] == 1:
            labels.append(label)
        else:  # several tokens in one parameter
            labels.extend(f"{label[:-1]} {i}]" for i in range(value.shape[-2]))
    return labels


def patch_labels(model: torch.nn.Module, pixel_values: torch.Tensor) -> list[str] | None:
    """`[CLS]` (and any other special tokens) then `patch r,c` in row-major order, for a ViT-style
    encoder; the grid comes from the pixel_values' height and width and the patch size (so
    interpolated positions get their own grid), else from the config's image_size. None when the
    layout is unknown."""
    config = _vision_config(model)
    patch = _pair(getattr(config, "patch_size", None))
    embeddings = _embeddings(model)
    if patch is None or embeddings is None:
        return None
    size = None
    if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
        size = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    if size is None:
        size = _pair(getattr(config, "image_size", None))
    if size is None:
        return None
    rows, cols = size[0] // patch[0], size[1] // patch[1]
    if rows < 1 or cols < 1:
        return None
    grid = [f"patch {r},{c}" for r in range(rows) for c in range(cols)]
    return _special_labels(embeddings) + grid


def input_labels(model: torch.nn.Module, inputs: dict, tokenizer=None) -> list[str] | None:
    """The labels of the (first stack's) sequence a dict of model inputs makes, or None if its
    layout is unknown (the caller labels it `pos i` once it knows the length)."""
    ids = inputs.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        row = ids[0].tolist()
        convert = getattr(tokenizer, "convert_ids_to_tokens", None)
        return list(convert(row)) if convert is not None else [str(i) for i in row]
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, torch.Tensor):
        return patch_labels(model, pixels)
    return None
