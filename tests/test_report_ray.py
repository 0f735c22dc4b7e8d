"""`attnscope report --ray` on a local Ray started here (two CPU workers) with the bundled MiniLM:
the same report.json and heads.parquet, to the bit, as the in-process run, over .txt, .jsonl and
a saved `datasets` dataset with bad documents and --limit; and a run interrupted in-process
finishes on Ray to the same report (the two paths share document ids and records)."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest
import ray
from test_report import ENGLISH, interrupted_run, report_args, write_corpus

from attnscope.cli import main as cli_main
from attnscope.service.report import records


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_in_process_report_and_resumes_an_in_process_run(local_ray, tmp_path, rng):
    corpus = write_corpus(tmp_path / "corpus", rng, lines=9, jsons=5)
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [*ENGLISH, None]}).save_to_disk(str(saved))
    # Named before the files: files are read first on both paths, so the limit cuts the dataset.
    corpus["paths"].insert(0, str(saved))
    total = len(corpus["good"]) + len(corpus["bad"]) + len(ENGLISH) + 1
    limit = ["--limit", str(total - 2)]
    local = tmp_path / "local"
    assert cli_main(report_args(None, corpus, local, *limit)) == 0
    report = json.loads((local / "report.json").read_text())
    assert report["documents"]["total"] == total - 2
    # MiniLM splits the random words into more tokens: some good lines of write_corpus are too long here.
    assert {d["doc_id"] for d in report["bad_documents"]} >= set(corpus["bad"])
    ids = set(pq.read_table(local / "heads.parquet").column("doc_id").to_pylist())
    kept = {f"{saved.resolve()}:{i}" for i in range(len(ENGLISH) - 1)}
    assert kept <= ids and f"{saved.resolve()}:{len(ENGLISH) - 1}" not in ids

    on_ray = tmp_path / "ray"
    assert cli_main(report_args(None, corpus, on_ray, *limit, "--ray")) == 0
    run = json.loads((on_ray / "run.json").read_text())
    assert (run["mode"], run["workers"], run["traced"]) == ("ray", 2, total - 2)
    assert list((on_ray / records.PARTS).glob("ray-*/*.parquet"))  # written by Ray Data's write_parquet
    assert (on_ray / "report.json").read_text() == (local / "report.json").read_text()
    assert pq.read_table(on_ray / "heads.parquet").equals(pq.read_table(local / "heads.parquet"))

    # Interrupted in-process after 4 documents, finished on Ray: still the same report.
    mixed = tmp_path / "mixed"
    interrupted_run(None, corpus, mixed, after=4, checkpoint_every=3, limit=total - 2)
    assert cli_main(report_args(None, corpus, mixed, *limit, "--ray")) == 0
    assert json.loads((mixed / "run.json").read_text())["skipped"] == 4
    assert (mixed / "report.json").read_text() == (local / "report.json").read_text()
