"""examples/needle.py: a haystack around one planted fact, the answer generated and traced; on the
hand-set model the answer must read the fact, so its sentence ranks first and the planted head
is the top retrieval head."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "needle.py"


@pytest.fixture(scope="module")
def needle():
    spec = importlib.util.spec_from_file_location("needle_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("depth", [0.1, 0.85])
def test_the_answer_reads_the_planted_fact_first(needle, depth):
    import attnscope

    tok = needle.word_tokenizer()
    ex = attnscope.Extractor(needle.planted_model(tok, positions=1400), tok)
    prompt, fact = needle.haystack(tok, 1100, depth=depth, seed=3)
    out = needle.read(ex, prompt, fact, new_tokens=3)
    assert out["answer"].split() == [needle.NEEDLE] * 3
    assert out["fact_first"], out["passages"]
    (a, b, mass, text), second = out["passages"][0], out["passages"][1]
    assert needle.NEEDLE in text and mass > 3 * second[2]
    fact_at = out["trace"].tokens.index(needle.NEEDLE)
    assert a <= fact_at < b  # the span ranked first holds the fact's token
    assert out["heads"][0][:2] == (0, 0) and out["heads"][0][2] == 1.0
    assert all(score < 1.0 for _, _, score in out["heads"][1:])


def test_the_example_runs_as_a_command(needle, capsys):
    assert needle.main(["--planted", "--tokens", "600", "--new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "L0 H0  1.00" in printed and "the planted fact is read first" in printed
