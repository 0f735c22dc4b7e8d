"""`python -m benchmarks.gpu`, the GPU proof in one command: its dry run writes every file the real
run would (so the command keeps working while no GPU is lent), and a stage that runs past its budget
is cut while the stages after it still report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from attnscope.benchmarks import kernels
from attnscope.benchmarks.gpu import run, stages

REPO = Path(__file__).resolve().parents[1]
STAGES = [name for name, s in stages.STAGES.items() if s.default]


def _gpu(*args: str, env: dict | None = None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_real_run_budgets_fit_a_nine_minute_device_call():
    assert STAGES == ["env", "install", "pytest", "kernels", "e2e", "views"]
    assert sum(stages.STAGES[name].budget_s for name in STAGES) <= run.DEFAULT_BUDGET <= 9 * 60 - 30


@pytest.mark.slow
def test_dry_run_writes_every_file_of_the_real_run(tmp_path):
    out, device_out = tmp_path / "results", tmp_path / "device-out"
    p = _gpu("--dry-run", "--out", str(out), env={"OUT": str(device_out)}, timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((out / "gpu-summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert [s["status"] for s in summary["stages"]] == ["ok"] * len(STAGES), summary["stages"]
    env = summary["environment"]
    assert {"commit", "date", "gpu", "driver", "torch", "triton", "transformers"} <= set(env)
    assert env["torch"] and env["transformers"] and env["commit"] != "unknown"
    page = (out / "gpu-summary.md").read_text()
    data = {}
    for name in STAGES:
        data[name] = json.loads((out / f"gpu-{name}.json").read_text())
        assert data[name]["status"] == "ok" and data[name]["dry_run"] is True
        assert data[name]["environment"]["commit"] == env["commit"] and data[name]["wall_s"] > 0
        assert (out / f"gpu-{name}.md").read_text().startswith(f"# gpu-{name}: ")
        assert (out / "gpu-logs" / f"{name}.log").is_file()
        assert f"| {name} | ok | " in page

    assert [r["step"] for r in data["install"]["rows"]] == ["pip install", "import"]
    assert data["pytest"]["facts"]["collected"] > 0  # the -m cuda selection exists
    assert any(r["module"].startswith("tests/kernels/") for r in data["pytest"]["rows"])
    kernels = data["kernels"]["rows"]
    assert {r["family"] for r in kernels} == {"rowstats", "tiles", "digest", "topk", "neuron"}
    assert {(r["L"], r["d"], r["causal"]) for r in kernels} == {
        (n, d, c) for n in (64, 96) for d in (16, 64) for c in (False, True)
    }
    assert {r["backend"] for r in kernels} == {"triton"}  # interpreted, as the GPU runs them compiled
    for r in kernels:  # the floor is kernels.py's without its memory term
        assert r["tflops"] > 0 and 0 < r["ratio_to_floor"] <= r["ratio_to_issue_floor"]
        assert abs(r["ratio_to_issue_floor"] * r["issue_floor_ms"] - r["ms"]) < 1e-9 * r["ms"]
    raw = data["e2e"]["raw"]
    assert {r["method"] for r in raw} == {"attnscope", "sdpa", "eager"}
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in raw)
    views = {r["view"]: r for r in data["views"]["rows"]}
    generation = views["generation traced (32 new tokens, + retrieval + passages)"]
    assert generation["status"] == "ok" and generation["issue"] == 6
    assert generation["generate_s"] > 0 and generation["vs_generate"] > 0
    split = views["device-map split vs one device"]
    assert split["status"] == "ok" and split["split"] == "CPU + disk offload" and split["devices"]
    assert split["max_abs_diff_attention"] < 1e-5 and split["max_abs_diff_head_stats"] < 1e-4
    measured = [r for r in views.values() if r["issue"] == 5]
    assert len(measured) == 3 and all(r["status"] == "ok" and r["seconds"] > 0 for r in measured)
    assert {r["backend"] for r in measured} == {"triton"}  # interpreted in the dry run
    assert "## Kernels" in page and "## End to end" in page

    # What the device tool brings back: the summary and one archive of everything (<= 8 files).
    assert sorted(p.name for p in device_out.iterdir()) == [
        "gpu-results.tar.gz",
        "gpu-summary.json",
        "gpu-summary.md",
    ]
    with tarfile.open(device_out / "gpu-results.tar.gz") as tar:
        names = set(tar.getnames())
    expected = {f"gpu-results/gpu-{n}.{ext}" for n in [*STAGES, "summary"] for ext in ("json", "md")}
    assert expected | {f"gpu-results/gpu-logs/{n}.log" for n in STAGES} <= names


def test_a_stage_past_its_budget_is_cut_and_the_next_stages_still_report(tmp_path):
    """Also the tune stage (not in the default run): every family at every launch-shape variant."""
    p = _gpu(
        "--dry-run",
        "--out",
        str(tmp_path),
        "--stages",
        "tune,hang,env",
        "--stage-budget",
        "hang=3",
        timeout=120,
    )
    assert p.returncode == 1, p.stdout + p.stderr  # not every stage ok
    summary = json.loads((tmp_path / "gpu-summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("tune", "ok"),
        ("hang", "timeout"),
        ("env", "ok"),
    ]
    hang = json.loads((tmp_path / "gpu-hang.json").read_text())
    assert hang["status"] == "timeout" and hang["budget_s"] == 3 and 3 <= hang["wall_s"] < 60
    (row,) = hang["rows"]  # what it wrote before it was cut is kept
    assert row["step"] == "started"
    with pytest.raises(ProcessLookupError):  # and its process is gone
        os.kill(row["pid"], 0)
    assert "**timeout**" in (tmp_path / "gpu-hang.md").read_text()
    assert "| hang | timeout | " in (tmp_path / "gpu-summary.md").read_text()
    tune = json.loads((tmp_path / "gpu-tune.json").read_text())
    ran = {(r["variant"], r["family"]) for r in tune["rows"]}
    assert ran == {(v, f) for v in ("default", "skip_interior", "autotuned") for f in kernels.FAMILIES}
    tuned = {c["kernel"] for c in tune["facts"]["autotune"]}
    assert tuned == {"row_stats", "digest", "probs_tile", "top_k", "neuron"}, tuned
    assert "skip_interior" not in tune["facts"], "the stage started with the default shapes"
    assert re.search(r"skip_interior [\d.]+× the default's time", summary["stages"][0]["headline"])


def test_the_real_e2e_plan_stops_eager_once_it_runs_out_of_memory(tmp_path, monkeypatch):
    """The GPU run's plan and bookkeeping, with benchmarks/e2e.py's measure() stood in for."""
    from attnscope.benchmarks import e2e

    def measure(spec, timeout):
        measured.append((spec["model"], spec["length"], spec["method"]))
        if spec["method"] == "eager" and spec["length"] >= 8192:
            return {**spec, "status": "out of memory"}
        if (spec["model"], spec["length"], spec["method"]) == ("llama3-8b", 131072, "attnscope"):
            raise subprocess.TimeoutExpired("measure", timeout)
        return {
            **spec,
            "status": "ok",
            "seconds": spec["length"] / 1e4,
            "peak_host_bytes": 1,
            "host_bytes": 1,
        }

    measured: list = []
    monkeypatch.setattr(e2e, "measure", measure)
    rec = stages.Record(tmp_path, "e2e", False, time.time() + 600)
    stages.e2e_stage(rec, False)
    status = {(r["model"], r["length"], r["method"]): r["status"] for r in rec.data["raw"]}
    assert max(n for m, n, _ in status if m == "gpt2-small") == 32768
    assert [n for m, n, _ in status if m == "llama3-8b"][::3] == [8192, 131072, 32768]  # 128k before 32k
    assert status["gpt2-small", 2048, "eager"] == "ok"
    assert status["gpt2-small", 8192, "eager"] == status["llama3-8b", 8192, "eager"] == "out of memory"
    assert status["gpt2-small", 32768, "eager"] == "not run: eager ran out of memory at L=8192"
    assert ("gpt2-small", 32768, "eager") not in measured and ("llama3-8b", 32768, "eager") not in measured
    assert status["llama3-8b", 131072, "attnscope"] == "timeout: stage budget spent"
    assert status["llama3-8b", 131072, "sdpa"] == "ok"
    assert rec.data["status"] == "incomplete"  # one measurement missing: not 'ok'
    data = run.finalize("e2e", tmp_path, {"commit": "abc"}, 200, 0, 1.0)
    assert data["status"] == "incomplete" and data["headline"].startswith("12 of 18 measured; eager out of")
    assert "from gpt2-small L 8192, llama3-8b L 8192 (longer not run); 1 timed out" in data["headline"]
    assert "llama3-8b at L 131072" not in data["headline"] and "llama3-8b at L 32768" in data["headline"]
    page = run.summary_markdown(
        {"dry_run": False, "environment": {}, "wall_s": 1, "budget_s": 510, "updated": "now", "stages": []},
        {"e2e": data},
    )
    assert "| llama3-8b | 131072 | timeout: stage budget spent |" in page


def test_a_stage_records_the_launch_shapes_autotuning_chose(tmp_path, monkeypatch):
    from attnscope.benchmarks.gpu.record import Record
    from attnscope.kernels import autotune

    chosen = {
        ("digest", (12, 12, 2048, 2048, 64)): (
            64,
            32,
            {"num_stages": 3, "num_warps": 4, "SKIP_INTERIOR": True},
        )
    }
    monkeypatch.setattr(autotune, "_TUNED", chosen)
    monkeypatch.delenv(autotune.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv(autotune.SKIP_INTERIOR_ENV, raising=False)
    record = Record(tmp_path, "views", dry_run=True, deadline=time.time() + 60)
    record.fact(length=2048)
    assert "autotune" not in json.loads(record.path.read_text())["facts"], "the default shapes: nothing tuned"
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "1")
    record.finish()
    (entry,) = json.loads(record.path.read_text())["facts"]["autotune"]
    assert entry == {
        "kernel": "digest",
        "shape": [12, 12, 2048, 2048, 64],
        "block_m": 64,
        "block_n": 32,
        "num_stages": 3,
        "num_warps": 4,
        "SKIP_INTERIOR": True,
    }


def test_the_tune_stage_times_each_variant_in_its_own_environment_and_restores_it(tmp_path, monkeypatch):
    from attnscope.benchmarks.gpu import measures
    from attnscope.benchmarks.gpu.record import Record
    from attnscope.kernels import autotune

    seen = []

    def fake_run(families, lengths, dims, heads, dtype, device, warmup, repeats):
        seen.append((os.environ.get(autotune.SKIP_INTERIOR_ENV), os.environ.get(autotune.AUTOTUNE_ENV)))
        row = {"family": "rowstats", "pass": "row_stats", "L": lengths[0], "d": dims[0], "causal": True}
        return [{**row, "ms": 10.0 / len(seen)}]

    monkeypatch.setattr(kernels, "run", fake_run)
    monkeypatch.setenv(autotune.SKIP_INTERIOR_ENV, "0")
    monkeypatch.delenv(autotune.AUTOTUNE_ENV, raising=False)
    record = Record(tmp_path, "tune", dry_run=True, deadline=time.time() + 60)
    measures.tune_stage(record, dry_run=True)
    assert seen == [(None, None), ("1", None), (None, "1")]
    assert os.environ[autotune.SKIP_INTERIOR_ENV] == "0" and autotune.AUTOTUNE_ENV not in os.environ
    data = json.loads(record.path.read_text())
    assert [r["variant"] for r in data["rows"]] == ["default", "skip_interior", "autotuned"]
    assert measures.tune_headline(data) == (
        "skip_interior 0.5× the default's time (0.5 to 0.5); autotuned 0.333× the default's time (0.333 to 0.333)"
    )
