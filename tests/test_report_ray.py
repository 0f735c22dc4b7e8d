"""`attnscope report --ray` on a local Ray started here (two CPU workers) with the bundled MiniLM:
the same report.json and heads.parquet, to the bit, as the in-process run, and a run interrupted
in-process finishes on Ray to the same report (the two paths share document ids and records)."""

from __future__ import annotations

import json

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


def test_ray_gives_the_in_process_report_and_resumes_an_in_process_run(local_ray, tmp_path, rng):
    corpus = write_corpus(tmp_path / "corpus", rng, lines=9, jsons=5)
    english = tmp_path / "corpus" / "english.txt"
    english.write_text("\n".join(ENGLISH) + "\n")
    corpus["paths"].append(str(english))
    local = tmp_path / "local"
    assert cli_main(report_args(None, corpus, local)) == 0

    on_ray = tmp_path / "ray"
    assert cli_main(report_args(None, corpus, on_ray, "--ray")) == 0
    run = json.loads((on_ray / "run.json").read_text())
    assert (run["mode"], run["workers"], run["traced"]) == (
        "ray",
        2,
        len(corpus["good"]) + len(corpus["bad"]) + len(ENGLISH),
    )
    assert list((on_ray / records.PARTS).glob("ray-*/*.parquet"))  # written by Ray Data's write_parquet
    assert (on_ray / "report.json").read_text() == (local / "report.json").read_text()
    assert pq.read_table(on_ray / "heads.parquet").equals(pq.read_table(local / "heads.parquet"))

    # Interrupted in-process after 4 documents, finished on Ray: still the same report.
    mixed = tmp_path / "mixed"
    interrupted_run(None, corpus, mixed, after=4, checkpoint_every=3)
    assert cli_main(report_args(None, corpus, mixed, "--ray")) == 0
    assert json.loads((mixed / "run.json").read_text())["skipped"] == 4
    assert (mixed / "report.json").read_text() == (local / "report.json").read_text()
