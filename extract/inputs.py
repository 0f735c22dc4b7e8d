"""Turning texts into the padded model inputs of one forward pass, and back into per-item ranges."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: The one rule of where a sentence ends, for texts (here) and for token strings (analysis'
#: sentence_spans): a closing punctuation mark, then any closing quotes or brackets.
SENTENCE_ENDERS = ".!?…。！？"
SENTENCE_CLOSERS = "\"'”’)]»"
#: Where a sentence of the text ends: the rule above and the white space before the next sentence
#: (the next sentence starts at the match's end).
SENTENCE_END = re.compile(f"[{re.escape(SENTENCE_ENDERS)}][{re.escape(SENTENCE_CLOSERS)}]*\\s+")


@dataclass
class Encoded:
    """One sequence's token ids, token types and display tokens (before padding)."""

    ids: list[int]
    tokens: list[str]
    token_types: list[int] | None = None
    sentence_b_start: int | None = None
    #: Token positions where a sentence of the text (or of the pair) begins after the first,
    #: from the tokenizer's character offsets; None when the tokenizer gives no offsets.
    sentence_starts: list[int] | None = None


def encode(tokenizer, text: str, pair: str | None = None) -> Encoded:
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if pair is not None and (not isinstance(pair, str) or not pair):
        raise ValueError(f"pair must be None or a non-empty string, got {pair!r}")
    try:  # fast tokenizers give character offsets, which place the text's sentences exactly
        enc = tokenizer(text, pair, add_special_tokens=True, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        enc = tokenizer(text, pair, add_special_tokens=True)
    ids = list(enc["input_ids"])
    if not ids:
        raise ValueError(f"the tokenizer produced no tokens for {text!r}")
    types = enc.get("token_type_ids")
    b_start = None
    if pair is not None:
        if getattr(enc, "encodings", None):  # fast tokenizers know which sentence each token came from
            seq = enc.sequence_ids(0)
            b_start = next((i for i, s in enumerate(seq) if s == 1), None)
        elif types is not None:
            b_start = next((i for i, t in enumerate(types) if t == 1), None)
    starts = None
    if "offset_mapping" in enc and getattr(enc, "encodings", None):
        starts = sentence_starts([text, pair], enc["offset_mapping"], enc.sequence_ids(0))
    return Encoded(
        ids, tokenizer.convert_ids_to_tokens(ids), list(types) if types is not None else None, b_start, starts
    )


#: Words whose period does not end a sentence (titles, Latin abbreviations); single letters
#: (initials) neither.
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "fig",
        "no",
        "vol",
        "approx",
        "inc",
        "ltd",
        "co",
    ]
)


def _sentence_bounds(text: str) -> list[int]:
    """Character positions where a sentence of `text` begins, after the first."""
    out = []
    for m in SENTENCE_END.finditer(text):
        if m.end() >= len(text):
            continue
        if text[m.start()] == ".":
            word = re.search(r"([\w.]+)$", text[: m.start()])
            w = word.group(1) if word else ""
            if w.lower() in ABBREVIATIONS or (len(w) == 1 and w.isalpha()):
                continue
        out.append(m.end())
    return out


def sentence_starts(texts: list[str | None], offsets, sequence_ids) -> list[int]:
    """Token positions where a sentence begins, after the first of each text: the first token of
    a text (sequence 0 or 1) whose character offset reaches a sentence boundary of that text
    (`SENTENCE_END`); special tokens (no sequence, or empty offsets) never start one."""
    bounds = {seq: _sentence_bounds(text) for seq, text in enumerate(texts) if text}
    cuts, seen = [], {}
    for i, (seq, (start, stop)) in enumerate(zip(sequence_ids, offsets, strict=True)):
        if seq is None or stop <= start:
            continue
        pending = bounds.get(seq, [])
        first = seq not in seen
        seen[seq] = True
        if first:
            if seq == 1:
                cuts.append(i)  # the pair's first token starts its first sentence
            continue
        if pending and start >= pending[0]:
            cuts.append(i)
            bounds[seq] = [b for b in pending if b > start]
    return cuts


def encode_target(tokenizer, target: str, decoder_start_token_id: int) -> Encoded:
    """Decoder inputs for `target`: its token ids shifted right behind the decoder start token."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    labels = list(tokenizer(text_target=target, add_special_tokens=True)["input_ids"])
    ids = [decoder_start_token_id, *labels[:-1]]
    return Encoded(ids, tokenizer.convert_ids_to_tokens(ids))


def encode_ids(tokenizer, input_ids: torch.Tensor, vocab_size: int) -> Encoded:
    ids_t = torch.as_tensor(input_ids)
    if ids_t.dim() == 2 and ids_t.shape[0] == 1:
        ids_t = ids_t[0]
    if ids_t.dim() != 1 or ids_t.numel() == 0:
        raise ValueError(f"input_ids must have shape [L] or [1, L] with L >= 1, got {tuple(ids_t.shape)}")
    if ids_t.dtype.is_floating_point or ids_t.dtype == torch.bool:
        raise ValueError(f"input_ids must be integers, got {ids_t.dtype}")
    lo, hi = int(ids_t.min()), int(ids_t.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"input_ids must be in [0, {vocab_size}), got values in [{lo}, {hi}]")
    ids = ids_t.tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]
    return Encoded(ids, tokens)


@dataclass
class Padded:
    ids: torch.Tensor  # [B, L] int64
    mask: torch.Tensor  # [B, L] int64, 1 = real token
    token_types: torch.Tensor | None  # [B, L] int64
    spans: list[range]  # real-token positions of each item


def pad(items: list[Encoded], pad_id: int, side: str) -> Padded:
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(items), width, dtype=torch.int64)
    types = torch.zeros(len(items), width, dtype=torch.int64) if any(e.token_types for e in items) else None
    spans = []
    for b, e in enumerate(items):
        start = width - len(e.ids) if side == "left" else 0
        span = range(start, start + len(e.ids))
        ids[b, span.start : span.stop] = torch.tensor(e.ids)
        mask[b, span.start : span.stop] = 1
        if types is not None and e.token_types:
            types[b, span.start : span.stop] = torch.tensor(e.token_types)
        spans.append(span)
    return Padded(ids, mask, types, spans)


def load_image(image):
    """A PIL image from a PIL image (as it is), a path or an image file's bytes (converted to RGB)."""
    import io

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - Pillow is not a core dependency
        raise ImportError("trace(image=...) needs Pillow: pip install pillow") from e

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(image))
    elif isinstance(image, str) or hasattr(image, "__fspath__"):
        source = image
    else:
        raise ValueError(
            f"image must be a PIL.Image, a path or an image file's bytes, got {type(image).__name__}"
        )
    try:
        with Image.open(source) as im:
            return im.convert("RGB")
    except UnidentifiedImageError as e:
        raise ValueError(
            f"cannot read an image from {'the bytes given' if isinstance(source, io.BytesIO) else source}: {e}"
        ) from e


def model_inputs(inputs, forward_params: set[str], model_name: str) -> dict:
    """A checked copy of a dict of model inputs: known names, tensors of batch size 1."""
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError("inputs must be a non-empty dict of model inputs (name -> tensor)")
    known = set(forward_params) - {"kwargs"}
    if "kwargs" in forward_params:  # transformers' **kwargs: the keyword arguments it documents
        try:
            from transformers.utils import TransformersKwargs

            known |= set(getattr(TransformersKwargs, "__annotations__", {}))
        except ImportError:  # pragma: no cover - an older transformers
            pass
    out = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise ValueError(f"input names must be strings, got {name!r}")
        if name in ("output_attentions", "output_hidden_states", "return_dict"):
            raise ValueError(f"{name} is set by attnscope, not by inputs")
        if name not in known:
            raise ValueError(
                f"{model_name}.forward takes no input {name!r}; it takes {', '.join(sorted(known))}"
            )
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 and not value.dtype.is_floating_point:
                pass
            elif value.dim() >= 1 and value.shape[0] != 1:
                raise ValueError(
                    f"inputs[{name!r}] has batch size {value.shape[0]} (shape {tuple(value.shape)}); "
                    "trace takes one item: batch size 1"
                )
        out[name] = value
    return out


class InputTooLong(ValueError):
    """An input has more tokens (special tokens included) than the caller's `max_tokens`."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the input is {tokens:,} tokens; at most {limit:,} are accepted")
        self.tokens, self.limit = tokens, limit
