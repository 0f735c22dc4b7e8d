"""Readable token labels for non-text model inputs (image patches, audio frame times), and the
fallback `pos i`."""

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


#: Whisper's feature extractor's defaults: 16 kHz audio, one log-mel frame every 160 samples (10 ms).
DEFAULT_SAMPLING_RATE = 16_000
DEFAULT_HOP_LENGTH = 160


def feature_extractor(*candidates):
    """The first candidate that is an audio feature extractor (it has `hop_length` and
    `sampling_rate`), or a processor's `feature_extractor` that is one; None if none is."""
    for obj in candidates:
        for inner in (obj, getattr(obj, "feature_extractor", None)):
            if inner is not None and all(
                isinstance(getattr(inner, a, None), int) for a in ("hop_length", "sampling_rate")
            ):
                return inner
    return None


def _audio_front(model: torch.nn.Module) -> list[torch.nn.Conv1d]:
    """The Conv1d layers of the (encoder's) audio front end, in order (Whisper: conv1, conv2)."""
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else model
    return [m for m in encoder.modules() if isinstance(m, torch.nn.Conv1d)]


def audio_labels(model: torch.nn.Module, input_features: torch.Tensor, features=None) -> list[str] | None:
    """The start time of the audio each encoder position covers, `0.00s`, `0.02s`, ..., for an
    encoder that reads log-mel frames `input_features` [1, mels, frames] through strided Conv1d
    layers (Whisper: stride 1 then 2).

    A position covers (product of the conv strides) × hop_length / sampling_rate seconds: Whisper
    at 16 kHz with a 160-sample hop (10 ms per frame) gives 2 × 10 ms = 20 ms. hop_length and
    sampling_rate come from `features`, the Extractor's feature extractor (e.g. a
    WhisperFeatureExtractor, or a processor holding one), else Whisper's defaults
    (DEFAULT_HOP_LENGTH = 160 samples at DEFAULT_SAMPLING_RATE = 16 kHz). None when the encoder
    has no Conv1d front end."""
    if not isinstance(input_features, torch.Tensor) or input_features.dim() != 3:
        return None
    convs = _audio_front(model)
    if not convs:
        return None
    length, stride = int(input_features.shape[-1]), 1
    for conv in convs:  # the output length of each conv in turn
        (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
        if conv.padding == "same":  # stride 1 only: the length stays
            continue
        pad = conv.padding[0] if isinstance(conv.padding, tuple) else 0
        length = (length + 2 * pad - d * (k - 1) - 1) // s + 1
        stride *= s
    if length < 1:
        return None
    fe = feature_extractor(features)
    hop = fe.hop_length if fe is not None else DEFAULT_HOP_LENGTH
    rate = fe.sampling_rate if fe is not None else DEFAULT_SAMPLING_RATE
    step = stride * hop / rate
    digits = 2 if abs(step * 100 - round(step * 100)) < 1e-9 else 3
    return [f"{i * step:.{digits}f}s" for i in range(length)]


def _converter(tokenizer):
    """`convert_ids_to_tokens` of a tokenizer, or of a processor's tokenizer."""
    for obj in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        convert = getattr(obj, "convert_ids_to_tokens", None)
        if callable(convert):
            return convert
    return None


def input_labels(model: torch.nn.Module, inputs: dict, tokenizer=None, processor=None) -> list[str] | None:
    """The labels of the (first stack's) sequence a dict of model inputs makes, or None if its
    layout is unknown (the caller labels it `pos i` once it knows the length): token ids through
    the tokenizer (their ids as text without one), image patches, audio frame times (`processor`
    or the tokenizer slot may hold the feature extractor, see `audio_labels`)."""
    ids = inputs.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        row = ids[0].tolist()
        convert = _converter(tokenizer)
        return list(convert(row)) if convert is not None else [str(i) for i in row]
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, torch.Tensor):
        return patch_labels(model, pixels)
    features = inputs.get("input_features")
    if isinstance(features, torch.Tensor):
        return audio_labels(model, features, feature_extractor(processor, tokenizer))
    return None
