"""benchmarks.generation: the cost of tracing a generation, in its quick mode."""

from __future__ import annotations

import json


def test_generation_benchmark_quick_mode(tmp_path):
    from attnscope.benchmarks import generation

    assert generation.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "generation-quick.json").read_text())["rows"]
    steps = {
        "generate (model alone)",
        "generate + trace",
        "+ retrieval scores",
        "+ retrieval + passages read",
    }
    assert {r["step"] for r in rows} == steps and {r["length"] for r in rows} == {40, 90}
    for r in rows:
        assert r["seconds"] > 0
        if r["step"] == "generate (model alone)":
            assert r["vs_generate"] == 1.0
    assert "× generate" in (tmp_path / "generation-quick.md").read_text()
