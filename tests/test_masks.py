"""Never silently wrong: each layer's MaskSpec is checked against the mask function transformers built.

A model whose real mask attnscope does not describe (Llama 4's chunked attention, packed
sequences, a custom or/and overlay) raises `MaskMismatch` during the forward pass, so no trace is
returned; every family attnscope does describe is checked on every call and never refused.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as tf
from transformers import masking_utils
from transformers.models.llama import modeling_llama

from attnscope import Extractor
from attnscope.extract import capture, capturing
from attnscope.kernels.masking import MaskSpec

from eager import check_views, eager_attentions
from tiny_models import CAUSAL, FAMILIES, build, random_text, word_tokenizer


def _llama4_causal_lm() -> torch.nn.Module:
    base = build("llama4_chunked")
    torch.manual_seed(0)
    lm = tf.Llama4ForCausalLM(base.config).to(torch.float64)
    lm.model.load_state_dict(base.state_dict())
    return lm.eval()


def test_llama4_chunked_attention_raises_instead_of_a_wrong_trace(rng):
    model = _llama4_causal_lm()
    tok = word_tokenizer()
    text = random_text(35, rng)  # 37 tokens: chunks of 8 end at 8, 16, 24, 32
    ex = Extractor(model, tok)
    with pytest.raises(capture.MaskMismatch) as err:
        ex.trace(text)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "Llama4ForCausalLM" in msg  # the model
    assert "model.layers.0.self_attn" in msg and "layer_idx=0" in msg  # the layer (layer 0 is chunked)
    assert "chunked attention (attention_chunk_size=8)" in msg  # the mask kind that differs
    assert "query 8, key " in msg and "transformers' mask says masked, attnscope's says visible" in msg
    # A padded batch (left padding: chunks start at each item's first token) is refused too.
    with pytest.raises(capture.MaskMismatch, match="chunked attention"):
        Extractor(model, word_tokenizer(padding_side="left")).trace_batch([text, random_text(12, rng)])


def test_llama4_within_one_chunk_is_not_a_false_alarm(rng):
    """8 tokens fit one chunk of 8: chunked equals causal there, and the trace is exact."""
    model = build("llama4_chunked")
    tok = word_tokenizer()
    text = random_text(6, rng)
    tr = Extractor(model, tok).trace(text)
    assert tr.seq_len == 8
    eager = eager_attentions(model, tok(text, return_tensors="pt")["input_ids"])
    check_views(tr, {"decoder": next(iter(eager.values()))})  # eager.py's CAUSAL omits llama4_text


def _peek_next(batch_idx, head_idx, q_idx, kv_idx):
    return kv_idx == q_idx + 1  # each query may also see the next token


def test_custom_or_mask_function_raises(rng, monkeypatch):
    """A Llama whose causal mask gets an or_mask_function overlay (as image-token models do)."""
    model = build("llama")
    patched = functools.partial(masking_utils.create_causal_mask, or_mask_function=_peek_next)
    monkeypatch.setattr(modeling_llama, "create_causal_mask", patched)
    with pytest.raises(capture.MaskMismatch) as err:
        Extractor(model, word_tokenizer()).trace(random_text(20, rng))
    msg = str(err.value)
    assert "LlamaModel" in msg and "layers.0.self_attn" in msg
    assert "differs in causal" in msg and "transformers' mask says visible, attnscope's says masked" in msg


def _scalar_only_skip_three_back(batch_idx, head_idx, q_idx, kv_idx):
    # reshape(()) works on vmap's 0-d indices only: the check must evaluate it as transformers does.
    return (q_idx.reshape(()) - kv_idx.reshape(())) != 3


def test_custom_and_mask_function_raises_even_when_only_vmap_can_evaluate_it(rng, monkeypatch):
    model = build("llama")
    patched = functools.partial(
        masking_utils.create_causal_mask, and_mask_function=_scalar_only_skip_three_back
    )
    monkeypatch.setattr(modeling_llama, "create_causal_mask", patched)
    wrong_way = "transformers' mask says masked, attnscope's says visible"
    with pytest.raises(capture.MaskMismatch, match=wrong_way), capturing(model):
        model(input_ids=torch.randint(4, 100, (1, 15), generator=rng), use_cache=False)


def test_packed_sequences_raise(rng):
    """position_ids restarting inside a row: transformers masks the sequences block-diagonally."""
    model = build("llama")
    ids = torch.randint(4, 100, (1, 12), generator=rng)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])
    with pytest.raises(capture.MaskMismatch, match="query 6, key "), capturing(model):
        model(input_ids=ids, position_ids=positions, use_cache=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_call_of_every_family_is_checked_padded_or_not(family, rng):
    """No family escapes the check (and none is refused): unpadded, and a padded batch."""
    model = build(family)
    side = "left" if family in CAUSAL else "right"
    mask = torch.ones(3, 29, dtype=torch.long)
    if side == "left":
        mask[1, :9], mask[2, :20] = 0, 0
    else:
        mask[1, 20:], mask[2, 9:] = 0, 0
    ids = torch.randint(4, 100, (3, 29), generator=rng)
    for attention_mask in (None, mask):
        kwargs = {"input_ids": ids, "use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if model.config.is_encoder_decoder:
            kwargs["decoder_input_ids"] = ids[:, :17]
            if attention_mask is not None:
                kwargs["decoder_attention_mask"] = torch.ones(3, 17, dtype=torch.long)
        with torch.no_grad(), capturing(model) as rec:
            model(**kwargs)
        assert rec.calls and all(c.mask_checked for c in rec.calls), family
        padded = [c.spec.key_padding is not None for c in rec.calls]
        assert any(padded) == (attention_mask is not None), family


def test_padded_trace_with_sliding_window_still_matches_eager(rng):
    """The padded, windowed case through the checked path: each item equals its own eager run."""
    model = build("mistral")
    tok = word_tokenizer(padding_side="left")
    texts = [random_text(n, rng) for n in (30, 11)]
    for text, tr in zip(texts, Extractor(model, tok).trace_batch(texts), strict=True):
        check_views(tr, eager_attentions(model, tok(text, return_tensors="pt")["input_ids"]))


def test_the_check_is_cheap_and_runs_once_per_distinct_mask(rng, monkeypatch):
    """300 tokens, batch of 2, two layers sharing one mask: one evaluation per batch item,
    a few thousand pairs each."""
    sizes = []
    real = capture._evaluate

    def counting(fn, b, q, k):
        sizes.append(len(q))
        return real(fn, b, q, k)

    monkeypatch.setattr(capture, "_evaluate", counting)
    model = build("llama")
    mask = torch.ones(2, 300, dtype=torch.long)
    mask[1, :40] = 0
    with torch.no_grad(), capturing(model) as rec:
        model(input_ids=torch.randint(4, 100, (2, 300), generator=rng), attention_mask=mask, use_cache=False)
    assert len(rec.calls) == 2 and len(sizes) == 2  # once per batch item, not per layer
    assert all(500 < n < 5000 for n in sizes), sizes


def test_allowed_pairs_equals_the_diagonal_of_allowed():
    q = torch.arange(12).repeat_interleave(12)
    k = torch.arange(12).repeat(12)
    padding = torch.tensor([[False, False] + [True] * 10])
    for spec in (
        MaskSpec(1.0),
        MaskSpec(1.0, causal=True),
        MaskSpec(1.0, causal=True, window=3),
        MaskSpec(1.0, window=2),
        MaskSpec(1.0, causal=True, window=4, key_padding=padding),
    ):
        block = spec.allowed(torch.arange(12), torch.arange(12))
        expected = torch.ones(144, dtype=torch.bool) if block is None else block.flatten()
        assert torch.equal(spec.allowed_pairs(q, k), expected)
