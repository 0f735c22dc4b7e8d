"""The public API: the bundled model with its real weights, clear errors, and the CLI."""

from __future__ import annotations

import pytest
import torch

import attnscope
from attnscope.cli import main as cli_main
from attnscope.extract import default_model_path

from eager import check_views
from tiny_models import build, random_text, word_tokenizer

SENTENCE = (
    "The doctor asked the nurse a question about the patient in room twelve, and she answered "
    "that he had slept well after the operation on his knee and ate hot soup at noon."
)


@pytest.fixture(scope="module")
def minilm64():
    return attnscope.Extractor.from_pretrained(dtype=torch.float64)


def test_default_model_with_real_weights_matches_eager(minilm64):
    from transformers import AutoModel

    tr = minilm64.trace(SENTENCE)
    assert tr.seq_len == 37 and tr.tokens[0] == "[CLS]" and tr.tokens[-1] == "[SEP]"
    assert (tr.num_layers, tr.num_heads) == (6, 12)
    eager_model = AutoModel.from_pretrained(
        default_model_path(), attn_implementation="eager", dtype=torch.float64
    )
    ids = minilm64.tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = eager_model(ids, output_attentions=True)
    check_views(tr, {"encoder": [a[0] for a in out.attentions]})


def test_default_model_float32_is_close_to_float64(minilm64):
    tr32 = attnscope.Extractor.from_pretrained().trace(SENTENCE, pair="She said yes.")
    tr64 = minilm64.trace(SENTENCE, pair="She said yes.")
    assert tr32.sentence_b_start == 37 and tr32.tokens[36] == "[SEP]"
    for layer in (0, 5):
        diff = (tr32.attention(layer, 3) - tr64.attention(layer, 3)).abs().max()
        assert diff < 1e-4, f"float32 vs float64 layer {layer}: {diff}"


def test_pair_changes_token_types(minilm64):
    with_pair = minilm64.trace("a b", pair="c d")
    assert with_pair.tokens == ["[CLS]", "a", "b", "[SEP]", "c", "d", "[SEP]"]
    assert with_pair.sentence_b_start == 4
    assert minilm64.trace("a b c d").sentence_b_start is None


@pytest.fixture(scope="module")
def tiny():
    return attnscope.Extractor(build("llama"), word_tokenizer())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda tr: tr.attention(2, 0), r"layer must be in \[0, 2\), got 2"),
        (lambda tr: tr.attention(-1, 0), r"layer must be in \[0, 2\)"),
        (lambda tr: tr.attention(0, 4), r"head must be in \[0, 4\), got 4"),
        (lambda tr: tr.attention(0, 0, queries=slice(0, 10, 2)), "step must be 1"),
        (lambda tr: tr.attention(0, 0, keys=slice(5, 5)), "selects nothing"),
        (lambda tr: tr.attention(0, 0, queries=12), r"queries index must be in \[-12, 12\)"),
        (lambda tr: tr.attention(0, 0, queries="all"), "must be None, an int or a slice"),
        (lambda tr: tr.pooled(0), "size must be an int >= 1"),
        (lambda tr: tr.pooled(4, heads=[]), "head selection is empty"),
        (lambda tr: tr.received(layers=[0, 7]), r"layer must be in \[0, 2\), got 7"),
        (lambda tr: tr.topk(0, 0, 0), r"k must be an int in \[1, 12\]"),
        (lambda tr: tr.topk(13, 0, 0), r"k must be an int in \[1, 12\]"),
        (lambda tr: tr.neuron(0, 0, 12), r"query must be in \[0, 12\), got 12"),
        (lambda tr: tr.head_stats(kind="cross"), r"kind must be one of \('decoder',\)"),
    ],
)
def test_bad_view_arguments_name_the_allowed_range(tiny, call, message):
    tr = tiny.trace(random_text(10, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=message):
        call(tr)


def test_bad_inputs_are_refused_clearly(tiny, minilm64):
    with pytest.raises(ValueError, match="non-empty string"):
        tiny.trace("")
    with pytest.raises(ValueError, match="exactly one of text or input_ids"):
        tiny.trace()
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 128\)"):
        tiny.trace(input_ids=torch.tensor([[5, 128]]))
    with pytest.raises(ValueError, match="must be integers"):
        tiny.trace(input_ids=torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="target is only for encoder-decoder"):
        tiny.trace("w1 w2", target="w3")
    with pytest.raises(ValueError, match="non-empty list"):
        tiny.trace_batch("w1 w2")
    with pytest.raises(ValueError, match="has 602 tokens but this model's position table holds 512"):
        minilm64.trace("word " * 600)
    with pytest.raises(ValueError, match="the input is 4 tokens; at most 3 are accepted") as refused:
        minilm64.trace("hello world", max_tokens=3)  # [CLS] hello world [SEP]
    assert (refused.value.tokens, refused.value.limit) == (4, 3)
    assert len(minilm64.trace("hello world", max_tokens=4).tokens) == 4


def test_trace_without_tokenizer_uses_input_ids(rng):
    ex = attnscope.Extractor(build("gpt2"))
    ids = torch.randint(0, 128, (1, 19), generator=rng)
    tr = ex.trace(input_ids=ids)
    assert tr.tokens == [str(int(i)) for i in ids[0]]
    with pytest.raises(ValueError, match="no tokenizer"):
        ex.trace("some text")


def test_trace_batch_equals_single_traces(tiny, rng):
    texts = [random_text(n, rng) for n in (9, 3, 14)]
    batch = tiny.trace_batch(texts)
    for text, tr in zip(texts, batch, strict=True):
        single = tiny.trace(text)
        assert tr.tokens == single.tokens
        assert torch.allclose(tr.attention(1, 2), single.attention(1, 2), atol=1e-10)
        assert torch.allclose(tr.pooled(4), single.pooled(4), atol=1e-10)


def test_cli_trace_prints_tokens_and_top_heads(capsys):
    assert cli_main(["trace", "The doctor asked the nurse a question.", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "[CLS] the doctor asked the nurse a question . [SEP]" in out
    for stat in attnscope.HEAD_STAT_NAMES:
        line = next(line for line in out.splitlines() if line.strip().startswith(stat))
        assert line.count("=") == 3, line


def test_cli_reports_errors_without_a_traceback(capsys):
    assert cli_main(["trace", ""]) == 2
    assert "error: text must be a non-empty string" in capsys.readouterr().err


def test_from_pretrained_loads_a_local_checkpoint(tmp_path, rng):
    build("gpt2", dtype=torch.float32, attn="sdpa").save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    ex = attnscope.Extractor.from_pretrained(str(tmp_path), device="cpu")
    assert ex.model.config._attn_implementation == "attnscope"  # loaded through the registered implementation
    tr = ex.trace(random_text(12, rng))
    assert tr.seq_len == 14 and tr.tokens[0] == "[CLS]"
    assert torch.allclose(tr.attention(1, 0).sum(-1), torch.ones(14), atol=1e-5)


def test_deadline_stops_the_forward_pass_between_layers(tiny):
    import time

    with pytest.raises(TimeoutError, match="after 0 attention layers"):
        tiny.trace("w1 w2 w3", deadline=time.monotonic() - 1)
    assert tiny.trace("w1 w2 w3", deadline=time.monotonic() + 60).seq_len == 5
