"""The benchmark scripts run and write well-formed results (their numbers are measured, not tested)."""

from __future__ import annotations

import json

from attnscope.benchmarks import kernels


def test_kernel_benchmark_quick_mode_writes_json_and_table(tmp_path):
    assert kernels.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "kernels-quick.json").read_text())
    assert {"date", "device", "torch", "triton", "commit"} <= set(data["environment"])
    # 2 lengths × 1 head dim × causal or not, for every pass of every family (tiles: one per length).
    assert len(data["rows"]) == 28
    assert {row["family"] for row in data["rows"]} == set(kernels.FAMILIES)
    for row in data["rows"]:
        assert row["ms"] > 0 and row["floor_ms"] > 0
        assert abs(row["ratio_to_floor"] - row["ms"] / row["floor_ms"]) < 1e-6 * row["ratio_to_floor"]
    table = (tmp_path / "kernels-quick.md").read_text()
    assert table.count("\n| row_stats |") == 4 and table.count("\n| pooled_256 |") == 4


def test_end_to_end_benchmark_quick_mode(tmp_path):
    from attnscope.benchmarks import e2e

    assert e2e.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "e2e-quick-raw.json").read_text())
    assert {(r["model"], r["length"], r["method"]) for r in rows} >= {
        ("minilm", 64, "attnscope"),
        ("gpt2-tiny", 384, "eager"),
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert r["seconds"] > 0 and r["peak_host_bytes"] >= 0
    ours = {(r["model"], r["length"]): r for r in rows if r["method"] == "attnscope"}
    eager = {(r["model"], r["length"]): r for r in rows if r["method"] == "eager"}
    for key, r in ours.items():
        assert (
            r["host_bytes"] < eager[key]["host_bytes"] or key[1] < 256
        )  # pooled 256 holds all of short inputs
    table = json.loads((tmp_path / "e2e-quick.json").read_text())["rows"]
    assert all("attnscope/sdpa_time" in row and "attnscope/eager_time" in row for row in table)
    assert (tmp_path / "e2e-quick.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model | L |" in (tmp_path / "e2e-quick.md").read_text()


def test_analysis_benchmark_quick_mode(tmp_path):
    from attnscope.benchmarks import analysis

    assert analysis.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "analysis-quick.json").read_text())["rows"]
    assert len(rows) == 2 * 5 and {r["length"] for r in rows} == {96, 160}
    for r in rows:
        assert r["seconds"] > 0
        if r["pass"] == "head-statistic terms":
            assert r["vs_terms"] == 1.0
    assert "rollout step (one query)" in (tmp_path / "analysis-quick.md").read_text()
