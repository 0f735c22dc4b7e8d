"""The eager fallback: a model whose attention never passes through AttentionInterface (BLOOM,
ALiBi in its own code) is traced from eager output_attentions, behind the same API and service."""

from __future__ import annotations

import grpc
import pytest
import torch
import transformers as tf

from attnscope import Client, Extractor, views
from attnscope.extract import extractor as extractor_module
from attnscope.extract.dense import DenseTrace
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer

from reference import dense_head_stats, dense_pooled
from tiny_models import COMMON, random_text, word_tokenizer


def bloom() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **COMMON)
    model = tf.AutoModel.from_config(config, dtype=torch.float64)
    with torch.no_grad():  # peaked heads, so a wrong row or column shows
        for name, p in model.named_parameters():
            if "query_key_value" in name and p.dim() == 2:
                p.mul_(6.0)
    return model.eval()


@pytest.fixture(scope="module")
def extractor():
    return Extractor(bloom(), word_tokenizer())


def _eager(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions])  # [layers, heads, L, L]


def test_bloom_is_traced_from_eager_attention(extractor, rng):
    text = random_text(23, rng)
    tr = extractor.trace(text)
    p = _eager(extractor.model, extractor.tokenizer, text)
    assert isinstance(tr, DenseTrace) and tr.method == "eager" and tr.kinds == ("decoder",)
    assert tr.shape() == tuple(p.shape) and len(tr.tokens) == p.shape[-1]
    torch.testing.assert_close(tr.attention(1, 2).double(), p[1, 2], atol=1e-6, rtol=0)
    expected = torch.stack([dense_pooled(layer, 7, 7) for layer in p])
    torch.testing.assert_close(tr.pooled(7).double(), expected.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.received().double(), p.sum(2), atol=1e-6, rtol=0)
    for layer in range(2):
        for name, expected in dense_head_stats(p[layer]).items():
            got = tr.head_stats()[name][layer].double()
            torch.testing.assert_close(got, expected.double(), atol=1e-6, rtol=0, msg=name)
    idx, probs = tr.topk(3, 0, 1, queries=slice(0, 5))
    assert idx[0].tolist() == [0, -1, -1] and probs[0, 1:].tolist() == [0.0, 0.0]  # row 0 sees one key
    expected_probs, expected_idx = p[0, 1, :5].topk(3, dim=-1)
    assert (idx[2:] == expected_idx[2:]).all()
    torch.testing.assert_close(probs[2:].double(), expected_probs[2:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no query/key vectors"):
        tr.neuron(0, 0, 1)


def test_a_padded_batch_matches_each_input_alone(extractor, rng):
    texts = [random_text(5, rng), random_text(14, rng)]
    for tr, text in zip(extractor.trace_batch(texts), texts, strict=True):
        p = _eager(extractor.model, extractor.tokenizer, text)
        torch.testing.assert_close(tr.attention(0, 3).double(), p[0, 3], atol=1e-6, rtol=0)


def test_inputs_too_long_for_the_fallback_say_why(extractor, monkeypatch):
    monkeypatch.setattr(extractor_module, "EAGER_MAX_BYTES", 2 * 4 * 4 * 20 * 20)  # 20 tokens
    with pytest.raises(ValueError, match=r"falls back to eager output_attentions.*send at most 20 tokens"):
        extractor.trace(random_text(30, torch.Generator().manual_seed(0)))


def test_the_service_serves_eager_traces(extractor, rng):
    running = BackgroundServer(AttentionCore({"bloom": extractor}), warm_up=False)
    try:
        with Client(running.address, timeout=120) as client:
            text = random_text(12, rng)
            got = client.extract(text, views=[views.tile(0, 1, name="t"), views.head_stats(name="s")])
            assert got.info.method == "eager" and got.info.kinds[0].query_len == 14
            p = _eager(extractor.model, extractor.tokenizer, text)
            torch.testing.assert_close(torch.from_numpy(got["t"]).double(), p[0, 1], atol=1e-6, rtol=0)
            info = client.create_trace(text)
            zoom = client.views(info.trace_id, [views.received(name="r"), views.topk(1, 0, 2, name="k")])
            assert zoom["r"].shape == (2, 4, 14) and zoom["k/indices"].shape == (14, 2)
            with pytest.raises(grpc.RpcError) as err:
                client.views(info.trace_id, [views.neuron(0, 0, 3)])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.stop()
