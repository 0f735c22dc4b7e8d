"""`attnscope report` in-process: the report's aggregates equal statistics computed directly from
`Trace.head_stats()` / `head_classes()` per document, bad documents are listed and skipped, a run
interrupted midway resumes to the same report, the progress line shows rate and ETA; and
`--compare` finds a head planted to change (two tiny models differing in one head's W_q).

The corpora and saved models here are shared with test_report_ray.py and test_report_html.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from attnscope import Extractor
from attnscope.cli import main as cli_main
from attnscope.extract.analysis import HEAD_CLASSES
from attnscope.kernels.facts import HEAD_STAT_NAMES
from attnscope.service.report import records
from attnscope.service.report.aggregate import SIGNATURE
from attnscope.service.report.run import ReportSettings, claim, run_in_process
from attnscope.service.report.tracer import DocumentTracer, torch_threads

from tiny_models import build, random_text, word_tokenizer

#: --max-tokens of the runs: the long line of `write_corpus` is over it.
MAX_TOKENS = 60
#: The head whose queries the compare test scales (layer, head) in the tiny BERT (2 × 4 heads).
PLANTED = (1, 2)
ENGLISH = [
    "The doctor asked the nurse a question about the patient.",
    "She said she would help, and then she helped the doctor again.",
    "A cat sat on the mat; a cat sat on the mat once more.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "He wrote the letter, sealed it, and sent it to his brother in Lisbon.",
]


# ---- shared helpers (imported by the other test_report* modules) --------------------------------


def save_tiny(folder: Path, seed: int = 0, edit=None) -> Path:
    """A tiny random BERT with the word tokenizer, saved as a model folder (what --model takes);
    `edit(model)` changes its weights first."""
    model = build("bert", dtype=torch.float32, seed=seed)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def write_corpus(folder: Path, gen: torch.Generator, lines: int = 7, jsons: int = 4) -> dict:
    """A .txt and a .jsonl of random word texts at odd lengths plus one bad document of each
    kind; {"good": {doc_id: text}, "bad": {doc_id: reason fragment}, "paths": [...]}."""
    folder.mkdir(parents=True, exist_ok=True)
    txt, jsonl = (folder / "lines.txt").resolve(), (folder / "records.jsonl").resolve()
    good, bad, raw = {}, {}, []
    for _ in range(lines):
        text = random_text(int(torch.randint(3, 41, (), generator=gen)), gen)
        good[f"{txt}:{len(raw)}"] = text
        raw.append(text.encode())
    for reason, line in (
        ("empty", b"   "),
        ("undecodable", b"w1 w2 \xff\xfe w3"),
        ("too long", random_text(MAX_TOKENS + 5, gen).encode()),
    ):
        bad[f"{txt}:{len(raw)}"] = reason
        raw.append(line)
    txt.write_bytes(b"\n".join(raw) + b"\n")
    rows = []
    for _ in range(jsons):
        text = random_text(int(torch.randint(5, 31, (), generator=gen)), gen)
        good[f"{jsonl}:{len(rows)}"] = text
        rows.append(json.dumps({"text": text, "id": len(rows)}))
    bad[f"{jsonl}:{len(rows)}"] = "not JSON"
    rows.append("{'text': 'single quotes'}")
    bad[f"{jsonl}:{len(rows)}"] = "no 'text' field"
    rows.append(json.dumps({"body": "w1 w2"}))
    jsonl.write_text("\n".join(rows) + "\n")
    return {"good": good, "bad": bad, "paths": [str(txt), str(jsonl)]}


def report_args(model: Path | None, corpus: dict, out: Path, *extra: str) -> list[str]:
    model_args = ["--model", str(model)] if model is not None else []
    return [
        "report",
        *model_args,
        "--data",
        *corpus["paths"],
        "--max-tokens",
        str(MAX_TOKENS),
        "--out",
        str(out),
        *extra,
    ]


def direct_statistics(extractor, texts: list[str]) -> tuple[dict, list]:
    """{statistic: float64 [documents, layers, heads]} and the head classes per document, from
    one `trace` per text: what the report must aggregate."""
    stats, classes = {name: [] for name in HEAD_STAT_NAMES}, []
    for text in texts:
        tr = extractor.trace(text)
        for name, values in tr.head_stats().items():
            stats[name].append(values.double().numpy())
        classes.append(tr.head_classes())
    return {name: np.stack(v) for name, v in stats.items()}, classes


def interrupted_run(
    model: Path | None, corpus: dict, out: Path, after: int, checkpoint_every: int, limit: int | None = None
) -> None:
    """An in-process run into `out` (model None: the bundled one) stopped by Ctrl-C once `after`
    documents are traced."""
    settings = ReportSettings(
        model=str(model or ""), data=corpus["paths"], max_tokens=MAX_TOKENS, limit=limit
    )
    claim(out, settings)
    tracer = DocumentTracer(Extractor.from_pretrained(model), MAX_TOKENS)
    seen = []

    def interrupt(batch):
        seen.extend(batch)
        if len(seen) == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), torch_threads(1):  # as the CLI's default --threads
        run_in_process(out, settings, tracer, checkpoint_every=checkpoint_every, on_records=interrupt)


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def corpus(tmp_path, rng) -> dict:
    return write_corpus(tmp_path / "corpus", rng)


# ---- tests --------------------------------------------------------------------------------------


def check_against_direct(report: dict, extractor, texts: list[str], ids: list[str]) -> None:
    """The report's aggregates against the traces of `texts` (documents `ids`, in report order)."""
    with torch_threads(1):  # as the CLI's default --threads
        direct, classes = direct_statistics(extractor, texts)
    n = len(texts)
    assert report["documents"]["traced"] == n
    for name, x in direct.items():
        got = report["head_statistics"][name]
        np.testing.assert_allclose(got["mean"], x.mean(0), rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["std"], x.std(0, ddof=1), rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["quantiles"]["0.5"], np.median(x, 0), rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["per_layer_mean"], x.mean((0, 2)), rtol=0, atol=1e-6, err_msg=name)
    layers, heads = direct["entropy"].shape[1:]
    for layer in range(layers):
        for head in range(heads):
            labels = [c[(layer, head)] for c in classes]
            counts = {label: labels.count(label) for label in HEAD_CLASSES}
            modal = max(HEAD_CLASSES, key=lambda label: (counts[label], -HEAD_CLASSES.index(label)))
            assert report["classes"]["modal"][layer][head] == modal
            assert report["classes"]["consistency"][layer][head] == pytest.approx(counts[modal] / n)
            # The documents where the head is most / least its class, by its signature statistic.
            ends = report["extremes"][layer][head]
            stat, high_is_more = SIGNATURE[modal]
            assert ends["statistic"] == stat
            values = direct[stat][:, layer, head]
            ascending = np.sort(values)
            highest_first = ascending[::-1]
            most, least = (highest_first, ascending) if high_is_more else (ascending, highest_first)
            for side, expected in (("most", most), ("least", least)):
                listed = ends[side]
                assert len(listed) == min(3, n)
                np.testing.assert_allclose([d["value"] for d in listed], expected[: len(listed)], atol=1e-6)
                for d in listed:
                    assert values[ids.index(d["doc_id"])] == pytest.approx(d["value"], abs=1e-6)


def test_report_means_equal_head_stats_over_documents_and_bad_documents_are_skipped(
    tiny, corpus, tmp_path, capsys
):
    out = tmp_path / "out"
    assert cli_main(report_args(tiny, corpus, out)) == 0
    report = json.loads((out / "report.json").read_text())
    good, bad = corpus["good"], corpus["bad"]
    ordered = sorted(good, key=lambda d: (d.rsplit(":", 1)[0], int(d.rsplit(":", 1)[1])))
    check_against_direct(report, Extractor.from_pretrained(tiny), [good[d] for d in ordered], ordered)

    listed = {d["doc_id"]: d["reason"] for d in report["bad_documents"]}
    assert sorted(listed) == sorted(bad)
    for doc_id, fragment in bad.items():
        assert fragment in listed[doc_id], (doc_id, listed[doc_id])
    assert report["documents"] == {"total": len(good) + len(bad), "traced": len(good), "bad": len(bad)}

    heads = pq.read_table(out / "heads.parquet")
    layers, n_heads = report["layers"], report["heads"]
    assert heads.num_rows == len(good) * layers * n_heads
    assert heads.column("doc_id").to_pylist()[:: layers * n_heads] == ordered
    first = Extractor.from_pretrained(tiny).trace(good[ordered[0]]).head_stats()
    for name in HEAD_STAT_NAMES:
        np.testing.assert_array_equal(
            heads.column(name).to_numpy()[: layers * n_heads], first[name].double().flatten()
        )

    # The progress line: documents done / total, then [elapsed<ETA, documents/s].
    err = capsys.readouterr().err
    total = len(good) + len(bad)
    assert re.search(rf"\b{total}/{total} \[\d+:\d\d<\d+:\d\d, +[\d.]+doc/s\]", err), err[-500:]


def test_report_on_the_bundled_minilm_equals_head_stats(tmp_path):
    data = tmp_path / "english.txt"
    data.write_text("\n".join(ENGLISH) + "\n")
    out = tmp_path / "out"
    assert cli_main(["report", "--data", str(data), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "all-MiniLM-L6-v2" and (report["layers"], report["heads"]) == (6, 12)
    ids = [f"{data.resolve()}:{i}" for i in range(len(ENGLISH))]
    check_against_direct(report, Extractor.from_pretrained(), ENGLISH, ids)


def test_parquet_and_a_saved_dataset_are_read_with_stable_ids(tiny, tmp_path, rng):
    import datasets
    import pyarrow as pa

    texts = [random_text(int(torch.randint(4, 20, (), generator=rng)), rng) for _ in range(5)]
    table = pa.table({"body": [*texts[:3], None]})
    pq.write_table(table, tmp_path / "docs.parquet")
    datasets.Dataset.from_dict({"body": texts[3:]}).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out"
    args = ["report", "--model", str(tiny), "--data", str(tmp_path / "docs.parquet"), str(tmp_path / "saved")]
    assert cli_main([*args, "--text-field", "body", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bad_documents"] == [
        {"doc_id": f"{tmp_path.resolve()}/docs.parquet:3", "reason": "no 'body' field"}
    ]
    ids = [f"{tmp_path.resolve()}/docs.parquet:{i}" for i in range(3)] + [
        f"{tmp_path.resolve()}/saved:{i}" for i in range(2)
    ]
    check_against_direct(report, Extractor.from_pretrained(tiny), texts, ids)
    assert pq.read_table(out / "heads.parquet").column("doc_id").unique().to_pylist() == ids

    # .txt files as one document each (a folder of them, read in path order).
    folder = tmp_path / "files"
    folder.mkdir()
    for i, text in enumerate(texts[:3]):
        (folder / f"doc{i}.txt").write_text(text.replace(" ", "\n", 1) + "\n")  # a line break inside
    out = tmp_path / "per-file"
    assert (
        cli_main(
            ["report", "--model", str(tiny), "--data", str(folder), "--txt-per", "file", "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    ids = [f"{(folder / f'doc{i}.txt').resolve()}:0" for i in range(3)]
    check_against_direct(
        report, Extractor.from_pretrained(tiny), [t.replace(" ", "\n", 1) + "\n" for t in texts[:3]], ids
    )


def test_an_interrupted_run_resumes_to_the_same_report(tiny, corpus, tmp_path):
    fresh = tmp_path / "fresh"
    assert cli_main(report_args(tiny, corpus, fresh)) == 0

    resumed = tmp_path / "resumed"
    interrupted_run(tiny, corpus, resumed, after=5, checkpoint_every=2)
    assert len(records.done_ids(resumed)) == 5  # 2 checkpoints + what was pending at the interrupt

    assert cli_main(report_args(tiny, corpus, resumed)) == 0
    run = json.loads((resumed / "run.json").read_text())
    total = len(corpus["good"]) + len(corpus["bad"])
    assert (run["skipped"], run["traced"]) == (5, total - 5)
    assert (resumed / "report.json").read_text() == (fresh / "report.json").read_text()
    assert pq.read_table(resumed / "heads.parquet").equals(pq.read_table(fresh / "heads.parquet"))

    # A third run has nothing left to trace; a run with other settings is refused, not mixed in.
    assert cli_main(report_args(tiny, corpus, resumed)) == 0
    assert json.loads((resumed / "run.json").read_text())["traced"] == 0
    assert cli_main(report_args(tiny, corpus, resumed, "--limit", "3")) == 2


def _plant(model) -> None:
    """Scale the planted head's queries: its attention sharpens, no other head's input changes."""
    layer, head = PLANTED
    query = model.encoder.layer[layer].attention.self.query
    d = model.config.hidden_size // model.config.num_attention_heads
    rows = slice(head * d, (head + 1) * d)
    query.weight[rows] *= 3.0
    query.bias[rows] *= 3.0


def test_compare_finds_the_planted_head_and_fails_ci_only_where_a_rule_holds(tmp_path, rng, capsys):
    corpus = write_corpus(tmp_path / "corpus", rng)
    base = save_tiny(tmp_path / "base")
    planted = save_tiny(tmp_path / "planted", edit=_plant)
    assert cli_main(report_args(base, corpus, tmp_path / "a")) == 0
    assert cli_main(report_args(planted, corpus, tmp_path / "b")) == 0
    compare = [
        "report",
        "--compare",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--out",
        str(tmp_path / "cmp"),
    ]

    assert cli_main(compare) == 0  # no rule: differences only
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    entropy = result["statistics"]["entropy"]
    top = entropy["changed_most"][0]
    assert (top["layer"], top["head"]) == PLANTED and top["difference"] < 0  # sharper: lower entropy
    diff = np.array(entropy["difference"])
    others = np.ones_like(diff, dtype=bool)
    others[PLANTED] = False
    assert np.abs(diff[others]).max() < 1e-6  # every other head sees the same inputs
    drop = -top["difference"]
    assert drop > 0.05 and entropy["standard_error"][PLANTED[0]][PLANTED[1]] > 0

    holds = [f"entropy drop > {drop / 2:.4f} on any head", f"entropy drop >= {drop / 2:.4f} on layer 1"]
    quiet = [
        f"entropy rise > {drop / 2:.4f}",
        f"entropy change > {drop / 2:.4f} on layer 0",
        "entropy drop > 0.5% on head 1.1",
    ]
    capsys.readouterr()
    assert cli_main([*compare, *[a for r in quiet for a in ("--fail-if", r)]]) == 0
    assert cli_main([*compare, *[a for r in [*quiet, *holds] for a in ("--fail-if", r)]]) == 1
    printed = capsys.readouterr().out
    assert f"HOLDS: {holds[0]} on L1.H2" in printed
    rules = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rules"]
    assert [r["heads"] for r in rules] == [[], [], [], ["L1.H2"], ["L1.H2"]]
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<script" not in html and "L1.H2" in html

    assert cli_main([*compare, "--fail-if", "entropy dips > 0.1"]) == 2  # a typo is an error, not a pass
    assert cli_main([*compare, "--fail-if", "loudness drop > 0.1"]) == 2


def test_missing_extras_and_bad_arguments_are_errors_that_say_what_to_do(
    tiny, corpus, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert cli_main(report_args(tiny, corpus, tmp_path / "r", "--ray")) == 2
    assert "pip install 'attnscope[report]'" in capsys.readouterr().err
    assert cli_main(["report", "--out", str(tmp_path / "x")]) == 2  # no --data
    assert cli_main(["report", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")]) == 2
    assert (
        cli_main(
            ["report", "--compare", str(tmp_path / "no"), str(tmp_path / "pe"), "--out", str(tmp_path / "z")]
        )
        == 2
    )
    assert "no report.json" in capsys.readouterr().err


def test_fail_if_rules_select_the_heads_they_name(rng):
    from attnscope.service.report.rules import evaluate, parse_rule

    a = (torch.rand(3, 4, generator=rng, dtype=torch.float64) + 0.5).tolist()
    b = [row[:] for row in a]
    b[2][1] = a[2][1] * 0.5  # a 50 % drop on L2.H1
    b[0][3] = a[0][3] + 0.3  # a rise of 0.3 on L0.H3
    classes = [["mixed"] * 4 for _ in range(3)]
    classes[2][1] = "induction"
    names = ("induction", "mixed")
    holds = lambda rule: evaluate(parse_rule(rule, names), a, b, classes)  # noqa: E731
    assert holds("induction drop > 40%") == ["L2.H1"] and holds("induction drop > 60%") == []
    assert holds("induction rise >= 0.29 on any head") == ["L0.H3"]
    assert holds("induction change > 0.001 on layer 0") == ["L0.H3"]
    assert (
        holds("induction change > 0.001 on head 2.1") == ["L2.H1"] == holds("induction drop > 0.001 on L2.H1")
    )
    assert holds("induction drop > 0.001 on induction heads") == ["L2.H1"]
    assert holds("induction drop > 0.001 on mixed heads") == []
    assert holds("induction change > 0.001 on all heads") == []
    assert holds("induction change >= 0 on all heads") == [f"L{i}.H{j}" for i in range(3) for j in range(4)]
    mean_change = abs(sum(map(sum, b)) - sum(map(sum, a))) / 12
    assert holds(f"induction change > {mean_change * 0.9} on mean") == ["mean"]
    assert holds(f"induction change > {mean_change * 1.1} on mean") == []
    for bad in (
        "induction drop 0.2",
        "induction fall > 0.2",
        "entropy drop > 0.2 on layer 9",
        "self drop > x",
    ):
        with pytest.raises(ValueError, match="--fail-if"):
            holds(bad)
