"""The fidelity table of the README: every named family's largest |attnscope - eager| (float64).

Run from the repository root: ``.venv/bin/python tests/fidelity.py``. Each family is the tiny
random model its tests use (tests/tiny_models.py and the family's test module), traced once on
a seeded input that crosses its window, chunk, segment, group and bucket edges, and compared
with transformers' eager ``output_attentions`` on every layer and head of every kind. The tests
assert each of these below 1e-5 (and every other view); this prints the measured values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_eager_fallback import bloom
from test_inputs import pixels, vit_eager
from test_masks_native import SEGMENTS, _gemma3, _packed_positions, _paligemma, gemma3_inputs
from test_masks_native import _eager as plain_eager
from test_position_bias import build as build_t5
from test_whisper import audio_inputs, max_errors, whisper, whisper_eager

from attnscope import Extractor

from eager import decoder_inputs, eager_attentions
from tiny_models import FAMILIES, build, random_text, word_tokenizer


def _text_family(family: str) -> Callable:
    def run(rng):
        model = build(family)
        tok = word_tokenizer()
        text = random_text(35, rng)
        ids = tok(text, return_tensors="pt")["input_ids"]
        dec = decoder_inputs(model, ids) if model.config.is_encoder_decoder else None
        eager = eager_attentions(model, ids, None, dec)
        if family == "llama4_chunked":
            eager = {"decoder": next(iter(eager.values()))}
        return Extractor(model, tok).trace(text), eager

    return run


def _t5(family: str) -> Callable:
    def run(rng):
        model = build_t5(family)
        tok = word_tokenizer()
        text, target = random_text(41, rng), random_text(29, rng)
        ids = tok(text, return_tensors="pt")["input_ids"]
        dec = decoder_inputs(model, tok(target, return_tensors="pt")["input_ids"])
        return Extractor(model, tok).trace(text, target=target), eager_attentions(model, ids, None, dec)

    return run


def _packed(rng):
    model = build("llama")
    ids = torch.randint(4, 100, (1, sum(SEGMENTS)), generator=rng)
    positions = _packed_positions(SEGMENTS)
    tr = Extractor(model, None).trace(inputs={"input_ids": ids, "position_ids": positions})
    return tr, {"decoder": plain_eager(model, input_ids=ids, position_ids=positions)}


def _paligemma_prefix(rng):
    model = _paligemma()
    ids = torch.cat([torch.full((9,), 120), torch.randint(4, 100, (24,), generator=rng)])[None]
    types = torch.cat([torch.zeros(23, dtype=torch.long), torch.ones(10, dtype=torch.long)])[None]
    px = torch.randn(1, 3, 42, 42, generator=rng, dtype=torch.float64)
    inputs = {
        "input_ids": ids,
        "token_type_ids": types,
        "pixel_values": px,
        "attention_mask": torch.ones_like(ids),
    }
    tr = Extractor(model, None).trace(inputs=inputs)
    language = plain_eager(model, **inputs)  # switches the whole model, vision tower too, to eager
    with torch.no_grad():
        vision = model.model.vision_tower(px, output_attentions=True).attentions
    return tr, {"decoder": language, "encoder": [a[0] for a in vision]}


def _gemma3_image(rng):
    model = _gemma3()
    inputs = gemma3_inputs(rng)
    tr = Extractor(model, None).trace(inputs=inputs)
    language = plain_eager(model, **inputs)
    with torch.no_grad():
        vision = model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    return tr, {"decoder": language, "encoder": [a[0] for a in vision]}


def _vision(family: str) -> Callable:
    def run(rng):
        model = build(family)
        pv = pixels(rng)
        return Extractor(model).trace(inputs={"pixel_values": pv}), vit_eager(model, pv)

    return run


def _whisper(rng):
    model = whisper()
    inputs = audio_inputs()
    return Extractor(model).trace(inputs=inputs), whisper_eager(model, inputs)


def _bloom(rng):
    model = bloom()
    tok = word_tokenizer()
    text = random_text(23, rng)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_attentions=True)
    return Extractor(model, tok).trace(text), {"decoder": [a[0] for a in out.attentions]}


def cases() -> dict[str, Callable]:
    table = {family: _text_family(family) for family in FAMILIES}
    table["llama4_chunked"] = _text_family("llama4_chunked")
    table["llama_packed"] = _packed
    table |= {f"{name}": _t5(name) for name in ("t5", "mt5", "umt5")}
    table["paligemma_prefix"] = _paligemma_prefix
    table["gemma3_image_groups"] = _gemma3_image
    table |= {
        name: _vision(name) for name in ("vit", "deit", "dinov2_registers", "clip_vision", "siglip_vision")
    }
    table["whisper"] = _whisper
    table["bloom (eager fallback)"] = _bloom
    return table


def main() -> None:
    print("| family | method | kinds: L q×k | max abs error vs eager (float64) |")
    print("|---|---|---|---|")
    for name, run in cases().items():
        tr, eager = run(torch.Generator().manual_seed(0))
        errors = max_errors(tr, eager)
        sizes = ", ".join(f"{k} {tr.shape(k)[2]}×{tr.shape(k)[3]}" for k in tr.kinds)
        worst = ", ".join(f"{k} {e:.1e}" for k, e in errors.items())
        print(f"| {name} | {tr.method} | {sizes} | {worst} |")
        assert set(errors) == set(tr.kinds) and max(errors.values()) < 1e-5, (name, errors)


if __name__ == "__main__":
    main()
