"""Generation traces (issue 16): the model's own generate, then the exact trace of prompt +
completion; retrieval scores, query focus and attention from chosen tokens against dense float64
recomputes from transformers' eager attention on the full sequence."""

from __future__ import annotations

import pytest
import torch

import attnscope

from eager import check_views, eager_attentions
from reference import assert_close
from tiny_models import build, build_lm, random_text, word_tokenizer

#: GPT-2, Llama with grouped-query attention (4 query heads, 2 key heads), Mistral with a sliding
#: window of 8 (the prompt and completion are longer than the window).
FAMILIES = ("gpt2", "llama", "mistral")


def _prompt(seed: int, words: int = 13) -> str:
    gen = torch.Generator().manual_seed(seed)
    run = random_text(5, gen)  # a repeated run: induction and copying have something to find
    return f"{run} {random_text(words - 10, gen)} {run}"


def _reference_ids(model, tok, prompt: str, n: int, **options) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    seed = options.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, pad_token_id=0, **options
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_ids_equal_model_generate_greedy_and_seeded_sampling(family):
    model, tok = build_lm(family), word_tokenizer()
    ex = attnscope.Extractor(model, tok)
    prompt = _prompt(1)
    tr = ex.trace(prompt, generate=9)
    assert tr.generated.ids == _reference_ids(model, tok, prompt, 9, do_sample=False)
    assert tr.prompt_len == len(tok(prompt)["input_ids"])
    assert tr.seq_len == tr.prompt_len + len(tr.generated.ids)
    assert tr.generated.text == tok.decode(tr.generated.ids)
    sampled = ex.trace(prompt, generate=7, do_sample=True, temperature=1.5, seed=11)
    assert sampled.generated.ids == _reference_ids(
        model, tok, prompt, 7, do_sample=True, temperature=1.5, seed=11
    )
    again = ex.trace(prompt, generate=7, do_sample=True, temperature=1.5, seed=11)
    assert again.generated.ids == sampled.generated.ids
    other = ex.trace(prompt, generate=7, do_sample=True, temperature=1.5, seed=12)
    assert other.generated.ids != sampled.generated.ids  # the seed is used, not ignored


@pytest.mark.parametrize("family", FAMILIES)
def test_every_view_of_a_generation_trace_equals_eager_attention_on_the_whole_sequence(family):
    model, tok = build_lm(family), word_tokenizer()
    tr = attnscope.Extractor(model, tok).trace(_prompt(2), generate=8)
    full = torch.tensor([tok(_prompt(2))["input_ids"] + tr.generated.ids])
    assert tr.seq_len == full.shape[1] and tr.seq_len > 8  # past Mistral's window of 8
    check_views(tr, eager_attentions(model, full))
    assert tr.tokens[tr.prompt_len :] == [
        t if t is not None else f"<id {i}>"
        for t, i in zip(tok.convert_ids_to_tokens(tr.generated.ids), tr.generated.ids, strict=True)
    ]


def _dense_retrieval(p_layers, ids, rows) -> torch.Tensor:
    out = torch.zeros(len(p_layers), p_layers[0].shape[0], dtype=torch.float64)
    for layer, p in enumerate(p_layers):
        top = p[:, rows].argmax(-1)  # [H, n]: invisible keys hold exactly 0
        out[layer] = (ids[top] == ids[torch.tensor(rows) + 1]).double().mean(-1)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_retrieval_scores_query_focus_and_attention_from_equal_dense_float64(family):
    model, tok = build_lm(family), word_tokenizer()
    tr = attnscope.Extractor(model, tok).trace(_prompt(3, words=17), generate=10)
    ids = torch.tensor(tok(_prompt(3, words=17))["input_ids"] + tr.generated.ids)
    (p_layers,) = eager_attentions(model, ids[None]).values()
    length = len(ids)
    generated_rows = list(range(tr.prompt_len - 1, length - 1))
    got = tr.retrieval_scores()
    assert got.shape == (len(p_layers), p_layers[0].shape[0]) and got.dtype == torch.float32
    assert_close(got, _dense_retrieval(p_layers, ids, generated_rows), 1e-6, "retrieval (generated)")
    rows = [3, 7, 12, length - 2]
    assert_close(tr.retrieval_scores(rows), _dense_retrieval(p_layers, ids, rows), 1e-6, "retrieval (rows)")
    # Query focus: the completion's tokens over three uneven context spans of the prompt.
    question, contexts = (tr.prompt_len, length), [(0, 4), (4, 11), (13, tr.prompt_len)]
    focus = tr.query_focus(question, contexts)
    for layer, p in enumerate(p_layers):
        for j, (a, b) in enumerate(contexts):
            expected = p[:, question[0] : question[1], a:b].sum(-1).mean(-1)
            assert_close(focus[layer, :, j], expected, 1e-5, f"focus L{layer} span {j}")
    # Attention from chosen tokens: mean of their rows over the chosen layers and heads.
    chosen, heads = [length - 1, 5, tr.prompt_len], [0, 3]
    expected = torch.stack([p[heads][:, chosen] for p in p_layers[1:]]).mean((0, 1, 2))
    assert_close(tr.attention_from(chosen, layers=[1], heads=heads), expected, 1e-6, "attention_from")
    everything = torch.stack(p_layers)[:, :, chosen].mean((0, 1, 2))
    assert_close(tr.attention_from(chosen), everything, 1e-6, "attention_from (all)")
    assert abs(float(tr.attention_from(chosen).sum()) - 1) < 1e-5


def test_generation_refusals_say_what_to_do():
    tok = word_tokenizer()
    base = attnscope.Extractor(build("gpt2"), tok)
    with pytest.raises(ValueError, match=r"cannot generate.*language-modelling head"):
        base.trace("w1 w2", generate=3)
    ex = attnscope.Extractor(build_lm("gpt2"), tok)
    with pytest.raises(ValueError, match="need generate=N"):
        ex.trace("w1 w2", do_sample=True)
    with pytest.raises(ValueError, match="positive number"):
        ex.trace("w1 w2", generate=0)
    with pytest.raises(ValueError, match="position table of 128"):
        ex.trace("w1 w2", generate=200)
    with pytest.raises(attnscope.extract.InputTooLong):
        ex.trace("w1 w2 w3", generate=10, max_tokens=12)
    plain = ex.trace("w1 w2 w3 w1 w2")
    assert plain.prompt_len is None and plain.generated is None
    with pytest.raises(ValueError, match="not a generation trace"):
        plain.retrieval_scores()
    with pytest.raises(ValueError, match="produced no token"):
        plain.retrieval_scores([plain.seq_len - 1])
    with pytest.raises(ValueError, match="distinct"):
        plain.attention_from([1, 1])
    # A renormalised generation trace keeps its split.
    tr = ex.trace("w1 w2 w3", generate=4)
    again = tr.renormalized([0])
    assert (again.prompt_len, again.generated) == (tr.prompt_len, tr.generated)


def test_from_pretrained_loads_a_causal_lm_checkpoint_with_its_head(tmp_path):
    model, tok = build_lm("llama", dtype=torch.float32), word_tokenizer()
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    ex = attnscope.Extractor.from_pretrained(tmp_path / "lm")
    assert type(ex.model).__name__ == "LlamaForCausalLM"
    tr = ex.trace("w1 w2 w3 w4", generate=3)
    assert len(tr.generated.ids) == 3 and tr.seq_len == tr.prompt_len + 3
    build("bert", dtype=torch.float32).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    assert type(attnscope.Extractor.from_pretrained(tmp_path / "bert").model).__name__ == "BertModel"


def test_cli_trace_generate_prints_the_answer_its_retrieval_heads_and_what_it_read(tmp_path, capsys):
    from attnscope.cli import main as cli_main

    model, tok = build_lm("gpt2", dtype=torch.float32), word_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompt = "w1 w2 w3. w4 w5 w6. w1 w2"
    assert cli_main(["trace", prompt, "--model", str(tmp_path), "--generate", "4", "--top", "2"]) == 0
    out = capsys.readouterr().out
    tr = attnscope.Extractor.from_pretrained(tmp_path).trace(prompt, generate=4)
    assert f"generated (4 after {tr.prompt_len} prompt tokens): {tr.generated.text!r}" in out
    retrieval = next(line for line in out.splitlines() if line.strip().startswith("retrieval"))
    assert retrieval.count("=") == 2
    (start, stop, mass), *_ = tr.passages(top=1)
    assert f"read: [{start}, {stop}) mass {mass:.3f}" in out
