"""Whole models: every view of a trace equals transformers' eager attention (float64).

For each family a tiny random model is run once with ``attn_implementation="eager"`` and
``output_attentions=True`` (the L×L truth), and once through attnscope; the captured run's hidden
states must equal the plain ``sdpa`` run's (eager for Gemma 2, whose soft-capping sdpa refuses).
"""

from __future__ import annotations

import pytest
import torch

from attnscope import Extractor
from attnscope.extract import capturing
from attnscope.kernels import backend, triton_common

from eager import check_views, decoder_inputs, eager_attentions
from reference import assert_close
from tiny_models import CAUSAL, FAMILIES, build, random_text, word_tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_matches_eager_on_37_tokens(family, rng):
    model = build(family)
    tok = word_tokenizer()
    text = random_text(35, rng)  # + [CLS] and [SEP] = 37 tokens
    pair = None
    if family == "bert":  # sentence pair: token types matter
        text, pair = random_text(20, rng), random_text(14, rng)
    tr = Extractor(model, tok).trace(text, pair=pair)
    enc = tok(text, pair, return_tensors="pt")
    assert tr.seq_len == 37 and tr.tokens == tok.convert_ids_to_tokens(enc["input_ids"][0])
    if pair is not None:
        assert tr.sentence_b_start == 22 and tr.tokens[21] == "[SEP]"
    dec = decoder_inputs(model, enc["input_ids"]) if model.config.is_encoder_decoder else None
    eager = eager_attentions(model, enc["input_ids"], enc.get("token_type_ids"), dec)
    check_views(tr, eager)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_with_capture_equal_plain_sdpa(family, rng):
    model = build(family)
    ids = torch.randint(4, 100, (2, 29), generator=rng)
    kwargs = {"input_ids": ids, "use_cache": False}
    if model.config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(4, 100, (2, 17), generator=rng)
    # transformers' sdpa refuses Gemma 2's soft-capping and gpt-oss's sinks; eager is their plain path.
    model.set_attn_implementation("eager" if family in ("gemma2", "gpt_oss") else "sdpa")
    with torch.no_grad():
        plain = model(**kwargs).last_hidden_state
    with torch.no_grad(), capturing(model) as rec:
        captured = model(**kwargs).last_hidden_state
    assert model.config._attn_implementation in ("eager", "sdpa"), "capture must restore the implementation"
    assert len(rec.calls) == (6 if model.config.is_encoder_decoder else 2)
    # Gemma 2's eager softmax runs in float32 even in a float64 model; attnscope's runs in float64.
    assert_close(captured, plain, 1e-6 if family == "gemma2" else 1e-10, f"{family} hidden states")


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_items_match_their_own_eager_run(family, rng):
    model = build(family)
    side = "left" if family in CAUSAL else "right"
    tok = word_tokenizer(padding_side=side)
    texts = [random_text(n, rng) for n in (35, 18, 27)]
    traces = Extractor(model, tok).trace_batch(texts)
    assert [t.seq_len for t in traces] == [37, 20, 29]
    for text, tr in zip(texts, traces, strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"]
        dec = decoder_inputs(model, ids) if model.config.is_encoder_decoder else None
        check_views(tr, eager_attentions(model, ids, None, dec))


def test_bart_target_sets_the_decoder_side(rng):
    model = build("bart")
    tok = word_tokenizer()
    src, tgt = random_text(30, rng), random_text(12, rng)
    tr = Extractor(model, tok).trace(src, target=tgt)
    assert tr.kinds == ("encoder", "decoder", "cross")
    assert len(tr.query_tokens("cross")) == 14 and len(tr.key_tokens("cross")) == 32
    assert tr.query_tokens("decoder")[0] == "[CLS]"  # decoder_start_token_id = 2
    ids = tok(src, return_tensors="pt")["input_ids"]
    dec = decoder_inputs(model, tok(text_target=tgt, return_tensors="pt")["input_ids"])
    check_views(tr, eager_attentions(model, ids, None, dec))
    assert tr.pooled(256, kind="cross").shape == (2, 4, 14, 32)


@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_oss", "bart", "bert"])
def test_triton_backend_trace_matches_eager(family, rng, monkeypatch):
    """The Trace API on the Triton kernels (interpreted on the CPU) against eager attention.

    float32 throughout: the kernels take fp16/bf16/fp32 (float64 traces stay on torch).
    """
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    assert backend.backend_name(torch.device("cpu")) == "triton"
    model = build(family, dtype=torch.float32)
    tok = word_tokenizer()
    text = random_text(35, rng)
    tr = Extractor(model, tok).trace(text)
    ids = tok(text, return_tensors="pt")["input_ids"]
    dec = decoder_inputs(model, ids) if model.config.is_encoder_decoder else None
    check_views(tr, eager_attentions(model, ids, None, dec))
