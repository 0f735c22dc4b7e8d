"""Whisper: `trace(inputs={"input_features": ..., "decoder_input_ids": ...})` on a tiny random
WhisperForConditionalGeneration (float64), every kind (encoder, decoder, cross) and every layer's
views against transformers' eager `output_attentions`, and audio positions labelled by time.

Whisper's encoder takes no attention_mask (it reads a fixed 2 × max_source_positions log-mel
frames, silence included), so a padded batch does not apply to the encoder; `trace_batch` takes
texts only, so decoder padding is not tested here. Sizes are not multiples of 16/32/64: 37 encoder
positions (74 frames), 23 decoder tokens.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from attnscope import Extractor

from eager import check_views
from reference import assert_close
from tiny_models import VOCAB, word_tokenizer

POSITIONS = 37  # encoder positions: 2 × 37 = 74 log-mel frames
DEC_LEN = 23


def whisper(dtype=torch.float64, seed: int = 0) -> tf.WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = tf.WhisperConfig(
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        num_mel_bins=80,
        max_source_positions=POSITIONS,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
    )
    model = tf.WhisperForConditionalGeneration(config).to(dtype)
    with torch.no_grad():  # peaked heads, so masking mistakes show up as large differences
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q_proj" in name or "k_proj" in name):
                p.mul_(4.0)
    return model.eval()


def audio_inputs(seed: int = 0, dtype=torch.float64) -> dict:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 80, 2 * POSITIONS, generator=gen, dtype=dtype)
    dec = torch.cat([torch.tensor([[2]]), torch.randint(4, 104, (1, DEC_LEN - 1), generator=gen)], dim=1)
    return {"input_features": features, "decoder_input_ids": dec}


def whisper_eager(model, inputs: dict) -> dict[str, list[torch.Tensor]]:
    """kind -> per-layer [H, Lq, Lk] of transformers' eager attention (batch of one)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return {
        "encoder": [a[0] for a in out.encoder_attentions],
        "decoder": [a[0] for a in out.decoder_attentions],
        "cross": [a[0] for a in out.cross_attentions],
    }


def times(n: int, step: float) -> list[str]:
    return [f"{i * step:.2f}s" for i in range(n)]


def max_errors(tr, eager: dict) -> dict[str, float]:
    """kind -> the largest |attnscope - eager| over every layer and head."""
    return {
        kind: max(
            (tr.attention(layer, head, kind=kind).double() - p[head].double()).abs().max().item()
            for layer, p in enumerate(layers)
            for head in range(p.shape[0])
        )
        for kind, layers in eager.items()
    }


def test_every_kind_and_layer_matches_eager_and_audio_is_labelled_by_time():
    model = whisper()
    tok = word_tokenizer()
    inputs = audio_inputs()
    tr = Extractor(model, tok).trace(inputs=inputs)
    # Whisper dispatches through AttentionInterface: Q/K captured, not the eager fallback.
    assert tr.method == "capture"
    assert tr.kinds == ("encoder", "decoder", "cross")
    assert tr.shape("encoder") == (2, 4, POSITIONS, POSITIONS)
    assert tr.shape("decoder") == (2, 4, DEC_LEN, DEC_LEN)
    assert tr.shape("cross") == (2, 4, DEC_LEN, POSITIONS)
    audio = times(POSITIONS, 0.02)  # Whisper's defaults: 2 frames × 160 samples at 16 kHz
    assert audio[:3] == ["0.00s", "0.02s", "0.04s"] and audio[-1] == "0.72s"
    decoder = tok.convert_ids_to_tokens(inputs["decoder_input_ids"][0].tolist())
    assert tr.query_tokens("encoder") == tr.key_tokens("encoder") == audio
    assert tr.query_tokens("decoder") == tr.key_tokens("decoder") == decoder
    assert tr.query_tokens("cross") == decoder and tr.key_tokens("cross") == audio
    eager = whisper_eager(model, inputs)
    errors = max_errors(tr, eager)
    print("max |attnscope - eager| per kind:", errors)
    assert all(e < 1e-5 for e in errors.values()), errors
    check_views(tr, eager)  # attention, pooled, received, head stats, entropy, top-k, neuron


def test_the_feature_extractor_sets_the_time_step_and_no_tokenizer_labels_decoder_ids():
    model = whisper()
    inputs = audio_inputs(1)
    fe = tf.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=320)
    ex = Extractor(model, processor=fe)
    tr = ex.trace(inputs=inputs)
    assert tr.query_tokens("encoder") == times(POSITIONS, 0.04)  # 2 × 320 samples at 16 kHz
    # without a tokenizer, token ids label themselves (as trace(input_ids=...) does)
    assert tr.query_tokens("decoder") == [str(i) for i in inputs["decoder_input_ids"][0].tolist()]
    check_views(tr, whisper_eager(model, inputs))
    with pytest.raises(ValueError, match="audio feature extractor, not an image processor"):
        ex.trace(image=b"any")


def test_from_pretrained_loads_the_feature_extractor(tmp_path):
    model = whisper()
    tok = word_tokenizer()
    fe = tf.WhisperFeatureExtractor(feature_size=80, hop_length=480)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    ex = Extractor.from_pretrained(tmp_path, device="cpu", dtype=torch.float64)
    assert isinstance(ex.processor, tf.WhisperFeatureExtractor) and ex.processor.hop_length == 480
    inputs = audio_inputs(2)
    tr = ex.trace(inputs=inputs)
    assert tr.query_tokens("encoder")[:3] == ["0.00s", "0.06s", "0.12s"]
    assert tr.query_tokens("decoder") == tok.convert_ids_to_tokens(inputs["decoder_input_ids"][0].tolist())
    ref = Extractor(model, tok).trace(inputs=inputs)
    for kind in ref.kinds:
        assert_close(tr.attention(1, 3, kind=kind), ref.attention(1, 3, kind=kind), 1e-12, kind)
