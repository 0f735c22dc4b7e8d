"""The service benchmark's load mode runs bounded and writes well-formed rows with no errors, over
gRPC and over Connect (its numbers are measured, not tested)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("grpc_health")
pytest.importorskip("aiohttp")

from attnscope.benchmarks import service


@pytest.mark.slow
def test_load_mode_writes_rows_for_every_transport_without_errors(tmp_path):
    assert service.main(["--load", "3", "--seconds", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "service-load.json").read_text())
    assert data["environment"]["cpu_count"] >= 1 and data["environment"]["commit"]
    rows = {row["transport"]: row for row in data["rows"]}
    assert list(rows) == ["grpc", "connect+json", "connect+proto"]
    for transport, row in rows.items():
        assert row["errors"] == 0 and row["note"] == "", (transport, row)
        assert row["clients"] == 3 and row["seconds"] == 1.0 and row["calls"] >= 3, row
        assert row["calls_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row
        assert row["tokens"] == 65 and row["result_KB"] > 290, row  # head stats + a 6·12·32·32 map
    table = (tmp_path / "service-load.md").read_text()
    assert "| transport | clients | seconds | calls | errors | calls/s |" in table
    assert table.count("\n| grpc | 3 |") == 1 and table.count("\n| connect+") == 2


def test_load_mode_is_bounded():
    for argv in (["--load", "0"], ["--load", "100000"], ["--load", "2", "--seconds", "100000"]):
        with pytest.raises(SystemExit):
            service.main(argv)
