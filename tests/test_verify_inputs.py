"""`Extractor.verify(inputs={...})` and `verify(image=...)`: the fidelity check on model inputs as
`trace` takes them, checked whole, on a tiny Whisper (encoder, decoder, cross) and a tiny ViT, with
a planted error still reported."""

from __future__ import annotations

import pytest
import torch
from test_inputs import _image, _image_processor
from test_verify import plant
from test_whisper import DEC_LEN, POSITIONS, audio_inputs, whisper

from attnscope import Extractor
from attnscope.extract import InputTooLong, VerifyReport
from attnscope.extract.verify import TOLERANCES

from tiny_models import build, word_tokenizer

EXPECTED = {"encoder": (POSITIONS, POSITIONS), "decoder": (DEC_LEN, DEC_LEN), "cross": (DEC_LEN, POSITIONS)}


def whisper_extractor() -> Extractor:
    return Extractor(whisper(torch.float32), word_tokenizer())


def test_whisper_inputs_pass_against_float32_and_float64_eager():
    ex = whisper_extractor()
    before = ex.model.config._attn_implementation
    report = ex.verify(inputs=audio_inputs(dtype=torch.float32))
    assert isinstance(report, VerifyReport)
    assert report.passed, str(report)
    expected = {(k, layer, ref) for k in EXPECTED for layer in range(2) for ref in ("float32", "float64")}
    assert {(r.kind, r.layer, r.reference) for r in report.rows} == expected
    assert all(r.tolerance == TOLERANCES[torch.float32] for r in report.rows)
    assert max(r.max_abs_diff for r in report.rows) < 1e-5
    assert report.lengths == EXPECTED and report.input_tokens == POSITIONS
    assert ex.model.config._attn_implementation == before
    assert all(p.dtype == torch.float32 for p in ex.model.parameters())
    # a dict that is more than token ids is model inputs too, positionally
    assert ex.verify(audio_inputs(1, dtype=torch.float32), 64).passed


def test_whisper_float64_inputs_pass_at_the_float64_tolerance():
    ex = Extractor(whisper(), word_tokenizer())
    report = ex.verify(inputs=audio_inputs())
    assert report.passed, str(report)
    assert {r.reference for r in report.rows} == {"float64"}
    assert all(r.tolerance == TOLERANCES[torch.float64] for r in report.rows)


@pytest.mark.parametrize(("kind", "layer"), [("cross", 1), ("encoder", 0)])
def test_a_planted_error_in_whisper_is_reported(monkeypatch, kind, layer):
    ex = whisper_extractor()
    plant(monkeypatch, kind, layer)
    report = ex.verify(inputs=audio_inputs(dtype=torch.float32))
    assert not report.passed
    assert {(r.kind, r.layer) for r in report.failures()} == {(kind, layer)}
    assert {r.reference for r in report.failures()} == {"float32", "float64"}
    assert min(r.max_abs_diff for r in report.failures()) > 1e-2
    assert f"FAILED: {kind} layer {layer}" in str(report)


def test_model_inputs_are_checked_whole():
    ex = whisper_extractor()
    with pytest.raises(InputTooLong, match=f"pass max_tokens={POSITIONS} or more"):
        ex.verify(inputs=audio_inputs(dtype=torch.float32), max_tokens=30)
    long_decoder = dict(audio_inputs(dtype=torch.float32), decoder_input_ids=torch.arange(4, 44)[None])
    with pytest.raises(InputTooLong, match="pass max_tokens=40 or more"):  # the decoder's 40
        ex.verify(inputs=long_decoder, max_tokens=39)
    assert ex.verify(inputs=long_decoder, max_tokens=40).passed
    with pytest.raises(ValueError, match="exactly one"):
        ex.verify("w1 w2", inputs=audio_inputs(dtype=torch.float32))
    with pytest.raises(ValueError, match="pair and target need text"):
        ex.verify(inputs=audio_inputs(dtype=torch.float32), target="w1")


def test_padded_model_inputs_are_refused():
    ex = Extractor(build("bert", dtype=torch.float32), word_tokenizer())
    enc = ex.tokenizer("w1 w2 w3", return_tensors="pt", padding="max_length", max_length=9)
    with pytest.raises(ValueError, match="all ones"):
        ex.verify(inputs=dict(enc))
    assert ex.verify(inputs=dict(ex.tokenizer("w1 w2 w3", return_tensors="pt"))).passed


def test_an_image_through_the_image_processor(rng):
    model = build("vit", dtype=torch.float32)
    ex = Extractor(model, processor=_image_processor())
    report = ex.verify(image=_image(rng))
    assert report.passed, str(report)
    assert report.lengths == {"encoder": (17, 17)}
    with pytest.raises(ValueError, match="no image processor"):
        Extractor(model).verify(image=_image(rng))
