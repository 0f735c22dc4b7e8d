"""T5-style relative position biases, exact: T5, mT5 and UMT5 (a table per layer) against eager.

The tiny configs use 8 buckets and a maximum distance of 20, so inputs of 30-45 tokens cross
every bucket edge: the exact buckets (bidirectional: |k - q| < 2; decoder: k - q > -4), the
logarithmic ones, and the last bucket past the maximum distance, on both sides of the diagonal.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from attnscope import Extractor
from attnscope.extract import capture
from attnscope.extract.mismatch import MaskMismatch
from attnscope.kernels import triton_common

from eager import check_views, decoder_inputs, eager_attentions
from tiny_models import random_text, word_tokenizer

T5_SHAPE = dict(
    vocab_size=128,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    pad_token_id=0,
    eos_token_id=3,
    decoder_start_token_id=0,
)
FAMILIES = {
    "t5": lambda: tf.T5ForConditionalGeneration(tf.T5Config(**T5_SHAPE)),
    "t5_base": lambda: tf.T5Model(tf.T5Config(**T5_SHAPE)),
    "mt5": lambda: tf.MT5ForConditionalGeneration(tf.MT5Config(**T5_SHAPE)),
    "umt5": lambda: tf.UMT5ForConditionalGeneration(tf.UMT5Config(**T5_SHAPE)),
}


def build(family: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family]().to(dtype).eval()
    # Random tables of a visible size: the default init would leave the bias small.
    for module in model.modules():
        if getattr(module, "has_relative_attention_bias", False):
            torch.nn.init.normal_(module.relative_attention_bias.weight, std=1.0)
    return model


def _eager(model, tok, text, target):
    ids = tok(text, return_tensors="pt")["input_ids"]
    dec = decoder_inputs(model, tok(target, return_tensors="pt")["input_ids"])
    return eager_attentions(model, ids, None, dec)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_relative_bias_views_equal_eager(family, rng):
    """Encoder, decoder and cross attention: every view within 1e-5 of eager (float64)."""
    model = build(family)
    tok = word_tokenizer()
    text, target = random_text(41, rng), random_text(29, rng)
    tr = Extractor(model, tok).trace(text, target=target)
    assert tr.kinds == ("encoder", "decoder", "cross")
    for kind in ("encoder", "decoder"):  # every self-attention layer carries its bias by offset
        for layer in range(2):
            spec = tr.layer_qk(layer, kind).spec
            lq, lk = tr.layer_qk(layer, kind).q.shape[1], tr.layer_qk(layer, kind).k.shape[1]
            assert spec.bias is not None and spec.bias.shape == (4, lq + lk - 1)
    assert tr.layer_qk(0, "cross").spec.bias is None  # T5's cross attention has a zero bias
    check_views(tr, _eager(model, tok, text, target))


def test_umt5_layers_use_their_own_tables(rng):
    """UMT5 gives each layer a table: the two layers' biases differ, each is its layer's own."""
    model = build("umt5")
    tr = Extractor(model, word_tokenizer()).trace(random_text(30, rng), target=random_text(12, rng))
    first, second = (tr.layer_qk(i, "encoder").spec.bias for i in range(2))
    assert not torch.equal(first, second)
    table = model.encoder.block[1].layer[0].SelfAttention.relative_attention_bias.weight
    assert {float(v) for v in second.flatten()} <= {float(v) for v in table.detach().flatten()}


def test_padded_batch_with_relative_bias(rng):
    """Right-padded sources and targets: each item equals its own eager run."""
    model = build("t5")
    tok = word_tokenizer()
    texts = [random_text(n, rng) for n in (35, 18, 27)]
    targets = [random_text(n, rng) for n in (9, 22, 14)]
    traces = Extractor(model, tok).trace_batch(texts, targets=targets)
    for text, target, tr in zip(texts, targets, traces, strict=True):
        check_views(tr, _eager(model, tok, text, target))


def test_no_lxl_bias_is_kept(rng):
    """The trace keeps one bias value per head and offset: linear in L, never Lq x Lk."""
    model = build("t5_base")
    tr = Extractor(model, word_tokenizer()).trace(random_text(60, rng), target=random_text(5, rng))
    spec = tr.layer_qk(0, "encoder").spec
    assert spec.bias.numel() == 4 * (2 * 62 - 1)


def test_a_bias_attnscope_cannot_reproduce_is_refused(rng, monkeypatch):
    """A planted change to the bias the model builds (not to its table) raises, naming the layer."""
    model = build("t5_base")
    owner = model.encoder.block[0].layer[0].SelfAttention
    real = owner.compute_bias

    def planted(query_length, key_length, device=None, past_seen_tokens=0):
        bias = real(query_length, key_length, device=device, past_seen_tokens=past_seen_tokens)
        return bias * 1.5 if query_length > 1 else bias

    monkeypatch.setattr(owner, "compute_bias", planted)
    with pytest.raises(MaskMismatch, match=r"encoder\.block\.0\.layer\.0\.SelfAttention.*position bias"):
        Extractor(model, word_tokenizer()).trace(random_text(20, rng), target=random_text(5, rng))


def test_model_outputs_with_capture_equal_eager(rng):
    """Capturing does not change what the model computes: hidden states equal eager's."""
    model = build("t5_base")
    ids = torch.randint(4, 100, (1, 33), generator=rng)
    dec = torch.randint(4, 100, (1, 17), generator=rng)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        plain = model(input_ids=ids, decoder_input_ids=dec).last_hidden_state
    with torch.no_grad(), capture.capturing(model):
        captured = model(input_ids=ids, decoder_input_ids=dec).last_hidden_state
    assert torch.allclose(captured, plain, atol=1e-10)


@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
def test_relative_bias_on_the_triton_kernels(rng, monkeypatch):
    """The Triton kernels (interpreted here) add the bias themselves: float32 views equal eager."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    model = build("t5_base", torch.float32)
    tok = word_tokenizer()
    text, target = random_text(37, rng), random_text(19, rng)
    tr = Extractor(model, tok).trace(text, target=target)
    eager = _eager(model.double(), tok, text, target)
    for kind, layers in eager.items():
        for layer, p in enumerate(layers):
            for head in range(p.shape[0]):
                got = tr.attention(layer, head, kind=kind).double()
                assert (got - p[head]).abs().max() < 1e-5, (kind, layer, head)
