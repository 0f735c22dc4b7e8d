"""The benchmark scripts run and write well-formed results (their numbers are measured, not tested)."""

from __future__ import annotations

import json

from benchmarks import kernels


def test_kernel_benchmark_quick_mode_writes_json_and_table(tmp_path):
    assert kernels.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "kernels-quick.json").read_text())
    assert {"date", "device", "torch", "triton", "commit"} <= set(data["environment"])
    assert len(data["rows"]) == 8  # 2 lengths × 1 head dim × causal or not × 2 passes
    for row in data["rows"]:
        assert row["ms"] > 0 and row["floor_ms"] > 0
        assert abs(row["ratio_to_floor"] - row["ms"] / row["floor_ms"]) < 1e-6 * row["ratio_to_floor"]
    table = (tmp_path / "kernels-quick.md").read_text()
    assert table.count("\n| row_stats |") == 4 and table.count("\n| pooled_256 |") == 4
