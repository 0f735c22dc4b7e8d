"""Never silently wrong: each layer's MaskSpec is checked against the mask function transformers built.

A model whose real mask attnscope does not describe (a custom or/and overlay) raises
`MaskMismatch` during the forward pass, so no trace is returned; every family attnscope does
describe is checked on every call and never refused. Llama 4's chunked attention is described
natively (`MaskSpec.chunk`) and traced exactly; packed sequences and bidirectional prefixes are
in test_masks_native.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as tf
from transformers import masking_utils
from transformers.models.llama import modeling_llama
from transformers.models.llama4 import modeling_llama4

from attnscope import Extractor
from attnscope.extract import capture, capturing, mask_check
from attnscope.kernels import triton_common
from attnscope.kernels.masking import MaskSpec

from eager import check_views, eager_attentions
from tiny_models import CAUSAL, FAMILIES, build, random_text, word_tokenizer


def _llama4_causal_lm() -> torch.nn.Module:
    base = build("llama4_chunked")
    torch.manual_seed(0)
    lm = tf.Llama4ForCausalLM(base.config).to(torch.float64)
    lm.model.load_state_dict(base.state_dict())
    return lm.eval()


def _as_decoder(eager: dict) -> dict:
    return {"decoder": next(iter(eager.values()))}  # eager.py's CAUSAL set omits llama4_text


@pytest.mark.parametrize("head", ["base", "causal_lm"])
def test_llama4_chunked_attention_traces_exactly(head, rng):
    """37 tokens cross the chunk edges at 8, 16, 24 and 32: every view equals eager (float64)."""
    model = build("llama4_chunked") if head == "base" else _llama4_causal_lm()
    tok = word_tokenizer()
    text = random_text(35, rng)
    tr = Extractor(model, tok).trace(text)
    spec = tr.layer_qk(0, "decoder").spec
    assert (spec.chunk, tr.layer_qk(1, "decoder").spec.chunk) == (8, None)  # layer 1 is full attention
    check_views(tr, _as_decoder(eager_attentions(model, tok(text, return_tensors="pt")["input_ids"])))


def test_llama4_padded_batch_items_match_their_own_eager_run(rng):
    """Left padding: transformers starts each item's chunks at its first real token."""
    model = build("llama4_chunked")
    tok = word_tokenizer(padding_side="left")
    texts = [random_text(n, rng) for n in (35, 13, 22)]
    for text, tr in zip(texts, Extractor(model, tok).trace_batch(texts), strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"]
        check_views(tr, _as_decoder(eager_attentions(model, ids)))


def test_llama4_outputs_with_capture_equal_plain_sdpa(rng):
    model = build("llama4_chunked")
    ids = torch.randint(4, 100, (2, 29), generator=rng)
    mask = torch.ones(2, 29, dtype=torch.long)
    mask[1, :5] = 0
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    with torch.no_grad(), capturing(model):
        captured = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    assert torch.allclose(captured[0], plain[0], atol=1e-10)
    assert torch.allclose(captured[1, 5:], plain[1, 5:], atol=1e-10)


@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
def test_llama4_chunks_on_the_triton_kernels(rng, monkeypatch):
    """The Triton kernels (interpreted here) take chunks themselves: float32 views equal eager,
    from a chunk edge to the row's last key."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    model = build("llama4_chunked", dtype=torch.float32)
    tok = word_tokenizer()
    text = random_text(35, rng)
    tr = Extractor(model, tok).trace(text)
    assert tr.layer_qk(0, "decoder").spec.chunk == 8
    eager = eager_attentions(model, tok(text, return_tensors="pt")["input_ids"])
    p = next(iter(eager.values()))[0]  # layer 0, the chunked one: [heads, L, L]
    for head in range(p.shape[0]):
        torch.testing.assert_close(tr.attention(0, head), p[head].float(), atol=2e-5, rtol=0)
    idx, probs = tr.topk(3, 0, 1, queries=slice(20, 21))
    assert set(idx[0].tolist()) <= set(range(16, 21))  # row 20 sees its own chunk, keys 16..20 only
    torch.testing.assert_close(probs[0], p[1, 20].float().sort(descending=True).values[:3], atol=2e-5, rtol=0)


def test_llama4_chunks_plus_an_unsupported_overlay_still_raise(rng, monkeypatch):
    """The chunk is only taken on when it makes the description exact; anything more still raises."""
    model = build("llama4_chunked")
    patched = functools.partial(masking_utils.create_chunked_causal_mask, or_mask_function=_peek_next)
    monkeypatch.setattr(modeling_llama4, "create_chunked_causal_mask", patched)
    with pytest.raises(capture.MaskMismatch) as err:
        Extractor(model, word_tokenizer()).trace(random_text(35, rng))
    assert "Llama4TextModel" in str(err.value) and "layers.0.self_attn" in str(err.value)


def test_llama4_within_one_chunk_is_not_a_false_alarm(rng):
    """8 tokens fit one chunk of 8: chunked equals causal there, and the trace is exact."""
    model = build("llama4_chunked")
    tok = word_tokenizer()
    text = random_text(6, rng)
    tr = Extractor(model, tok).trace(text)
    assert tr.seq_len == 8
    assert tr.layer_qk(0, "decoder").spec.chunk is None  # one chunk: plain causal is exact
    check_views(tr, _as_decoder(eager_attentions(model, tok(text, return_tensors="pt")["input_ids"])))


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
    real = mask_check._evaluate

    def counting(fn, b, q, k):
        sizes.append(len(q))
        return real(fn, b, q, k)

    monkeypatch.setattr(mask_check, "_evaluate", counting)
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


def _brute(spec: MaskSpec, n: int, batch: int = 0) -> torch.Tensor:
    """Dense truth of the structural facts, pair by pair."""
    origin = 0 if spec.chunk_start is None else int(spec.chunk_start[batch])
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            ok = k <= q if spec.causal else True
            if spec.window is not None:
                ok &= (q - k < spec.window) if spec.causal else abs(q - k) < spec.window
            if spec.chunk is not None:
                ok &= (q - origin) // spec.chunk == (k - origin) // spec.chunk
            out[q, k] = ok
    return out


@pytest.mark.parametrize(
    "spec",
    [
        MaskSpec(1.0, causal=True, chunk=4),
        MaskSpec(1.0, causal=True, chunk=5, chunk_start=torch.tensor([0, 3])),
        MaskSpec(1.0, causal=True, window=3, chunk=6, chunk_start=torch.tensor([2])),
        MaskSpec(1.0, chunk=4),
        MaskSpec(1.0, chunk=3, chunk_start=torch.tensor([1, 2])),
    ],
)
def test_chunk_allowed_and_key_range_match_the_brute_force(spec):
    n = 17
    batches = 1 if spec.chunk_start is None else len(spec.chunk_start)
    for b in range(batches):
        truth = _brute(spec, n, b)
        assert torch.equal(spec.allowed(torch.arange(n), torch.arange(n), batch=b), truth)
        q = torch.arange(n).repeat_interleave(n)
        k = torch.arange(n).repeat(n)
        assert torch.equal(spec.allowed_pairs(q, k, batch=b), truth.flatten())
        for q0 in range(n):
            for q1 in range(q0 + 1, n + 1):
                lo, hi = spec.key_range(q0, q1, n)
                visible = truth[q0:q1].any(0).nonzero().flatten()
                assert visible.min() >= lo and visible.max() < hi, (q0, q1, lo, hi)


def test_chunk_start_follows_the_batch_item():
    spec = MaskSpec(1.0, causal=True, chunk=4, chunk_start=torch.tensor([0, 3, 5]))
    assert spec.for_batch_item(0, slice(0, 9)).chunk_start is None
    assert spec.for_batch_item(1, slice(3, 9)).chunk_start is None  # left padding cut away
    assert int(spec.for_batch_item(2, slice(2, 9)).chunk_start[0]) == 3
    with pytest.raises(ValueError, match="attention chunk"):
        MaskSpec(1.0, chunk=0)
