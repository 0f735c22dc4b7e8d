"""`Extractor.verify` and `attnscope verify`: attnscope's attention against eager output_attentions
on the user's own model, per kind and layer, with a planted error reported as a failure."""

from __future__ import annotations

import pytest
import torch

import attnscope.extract.extractor as extractor_module
from attnscope import Extractor
from attnscope.cli import main as cli_main
from attnscope.extract.trace import Trace
from attnscope.extract.verify import TOLERANCES, VerifyError

from tiny_models import build, random_text, word_tokenizer

KINDS = {"gpt2": ("decoder",), "llama": ("decoder",), "bart": ("encoder", "decoder", "cross")}


def text(n_words: int, seed: int = 0) -> str:
    return random_text(n_words, torch.Generator().manual_seed(seed))


def extractor(family: str, dtype=torch.float32) -> Extractor:
    return Extractor(build(family, dtype=dtype, attn="sdpa"), word_tokenizer())


def plant(monkeypatch, kind: str, layer: int) -> None:
    """Every Trace the Extractor builds gets one layer's captured keys perturbed."""

    class Planted(Trace):
        def __init__(self, layers, *args, **kwargs):
            lqk = layers[kind][layer]
            noise = torch.randn(lqk.k.shape, generator=torch.Generator().manual_seed(1), dtype=lqk.k.dtype)
            lqk.k = lqk.k + noise.to(lqk.k.device)
            super().__init__(layers, *args, **kwargs)

    monkeypatch.setattr(extractor_module, "Trace", Planted)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart"])
def test_tiny_models_pass_and_the_model_is_left_as_it_was(family):
    ex = extractor(family)
    before = ex.model.config._attn_implementation
    report = ex.verify(text(20))
    assert report.passed, str(report)
    layers = 2
    expected = {
        (k, layer, ref) for k in KINDS[family] for layer in range(layers) for ref in ("float32", "float64")
    }
    assert {(r.kind, r.layer, r.reference) for r in report.rows} == expected
    assert max(r.max_abs_diff for r in report.rows) < 1e-5
    assert all(r.tolerance == TOLERANCES[torch.float32] for r in report.rows)
    assert report.lengths == {k: (22, 22) for k in KINDS[family]}
    assert ex.model.config._attn_implementation == before
    assert all(p.dtype == torch.float32 for p in ex.model.parameters())
    table = str(report)
    assert "PASSED" in table and "FAIL" not in table
    assert table.count(" ok") == len(expected)


@pytest.mark.parametrize(("family", "kind", "layer"), [("bart", "cross", 1), ("llama", "decoder", 0)])
def test_a_planted_error_fails_naming_its_kind_and_layer(monkeypatch, family, kind, layer):
    ex = extractor(family)
    plant(monkeypatch, kind, layer)
    report = ex.verify(text(20))
    assert not report.passed
    assert {(r.kind, r.layer) for r in report.failures()} == {(kind, layer)}
    assert {r.reference for r in report.failures()} == {"float32", "float64"}
    assert min(r.max_abs_diff for r in report.failures()) > 1e-2
    assert all(r.passed for r in report.rows if (r.kind, r.layer) != (kind, layer))
    assert f"FAILED: {kind} layer {layer}" in str(report)


def test_max_tokens_cuts_the_input_for_the_trace_and_the_eager_runs():
    ex = extractor("bart")
    seen = []
    ex.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append((kw["input_ids"].shape, kw["decoder_input_ids"].shape)),
        with_kwargs=True,
    )
    report = ex.verify(text(40), max_tokens=16)
    assert report.passed, str(report)
    assert report.input_tokens == 42 and report.max_tokens == 16
    assert report.lengths == {"encoder": (16, 16), "decoder": (16, 16), "cross": (16, 16)}
    # the trace, the model's own eager run; the float64 copy's hooks were copied with it
    assert len(seen) == 3 and set(seen) == {(torch.Size([1, 16]), torch.Size([1, 16]))}
    assert "the first 16 tokens" in str(report)


def test_input_ids_and_a_dict_of_inputs():
    ex = extractor("llama")
    ids = torch.tensor([[5, 9, 17, 33, 2, 60, 61, 8, 4, 100, 7]])
    report = ex.verify(ids, max_tokens=8)
    assert report.passed and report.lengths == {"decoder": (8, 8)} and report.input_tokens == 11
    assert ex.verify({"input_ids": ids, "attention_mask": torch.ones_like(ids)}).passed
    with pytest.raises(ValueError, match="all ones"):
        ex.verify({"input_ids": ids, "attention_mask": torch.zeros_like(ids)})


def test_float64_model_is_compared_with_float64_eager_only():
    ex = extractor("llama", dtype=torch.float64)
    report = ex.verify(text(12))
    assert report.passed, str(report)
    assert {r.reference for r in report.rows} == {"float64"}
    assert all(r.tolerance == TOLERANCES[torch.float64] for r in report.rows)
    assert any("float64 eager only" in n for n in report.notes)


def test_bfloat16_model_is_compared_in_its_dtype_float32_and_float64():
    ex = extractor("llama", dtype=torch.bfloat16)
    report = ex.verify(text(12))
    assert {r.reference for r in report.rows} == {"bfloat16", "float32", "float64"}
    assert all(r.tolerance == TOLERANCES[torch.bfloat16] for r in report.rows)
    assert report.passed, str(report)
    assert all(p.dtype == torch.bfloat16 for p in ex.model.parameters())


def test_a_copy_that_does_not_fit_is_skipped_and_said():
    ex = extractor("gpt2")
    report = ex.verify(text(10), copy_limit_bytes=0)
    assert {r.reference for r in report.rows} == {"float32"}
    assert any("no float64 reference" in n for n in report.notes)
    assert "note: no float64 reference" in str(report)


def test_a_model_without_eager_attention_gets_a_clear_error():
    ex = extractor("gpt2")
    real = ex.model.set_attn_implementation

    def refuse(impl, *a, **k):
        if impl == "eager":
            raise ValueError("GPT2Model does not support an attention implementation through eager")
        return real(impl, *a, **k)

    ex.model.set_attn_implementation = refuse
    with pytest.raises(VerifyError, match="cannot run eager attention, so it cannot be verified"):
        ex.verify(text(10))
    assert ex.model.config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-verify")
    build("llama", dtype=torch.float32, attn="sdpa").save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_cli_prints_the_table_and_exits_0_on_pass(model_dir, capsys):
    code = cli_main(
        ["verify", "--model", str(model_dir), "--text", text(30), "--max-tokens", "20", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "max |diff|" in out and "decoder" in out and "PASSED" in out
    assert "input: 32 tokens; compared: decoder 20×20" in out


def test_cli_exits_1_on_a_planted_error(model_dir, capsys, monkeypatch):
    plant(monkeypatch, "decoder", 1)
    code = cli_main(["verify", "--model", str(model_dir), "--text", text(10), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED: decoder layer 1" in out


def test_a_model_that_fails_under_eager_gets_a_clear_error(monkeypatch):
    ex = extractor("llama")
    import transformers.models.llama.modeling_llama as llama

    def broken(*a, **k):
        raise RuntimeError("no eager kernel here")

    monkeypatch.setattr(llama, "eager_attention_forward", broken)
    with pytest.raises(VerifyError, match=r"failed under attn_implementation='eager'.*no eager kernel"):
        ex.verify(text(10))
    assert ex.model.config._attn_implementation == "sdpa"


def test_cli_on_the_bundled_model_with_real_weights(capsys):
    assert cli_main(["verify", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bundled all-MiniLM-L6-v2 (float32)" in out and "encoder" in out and "PASSED" in out
