"""benchmarks/kernels.py times every kernel family; its cheap modes run on a CPU (the torch
backend, or the Triton kernels interpreted), so each family's benchmark is known to run."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from attnscope.kernels import digest, triton_common

try:
    from attnscope.benchmarks import kernels as bench
except (
    ImportError
):  # installed before benchmarks/ became attnscope.benchmarks: the checkout's (python -m pytest)
    from attnscope.benchmarks import kernels as bench

REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")


def test_every_kernel_family_has_a_benchmark(capsys):
    """Each kernels/ module that defines a Triton kernel (`_..._kernel`) is a benchmark family."""
    with_kernels = set()
    for module in Path(digest.__file__).resolve().parent.glob("*.py"):
        tree = ast.parse(module.read_text())
        if any(
            isinstance(n, ast.FunctionDef) and n.name.startswith("_") and n.name.endswith("_kernel")
            for n in ast.walk(tree)
        ):
            with_kernels.add(module.stem)
    assert with_kernels == set(bench.FAMILIES)
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    shown = capsys.readouterr().out
    assert all(family in shown for family in bench.FAMILIES)


@pytest.mark.parametrize("which", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("family", list(bench.FAMILIES))
def test_every_family_runs_in_the_dry_run(family, which, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", which)  # triton: interpreted (TRITON_INTERPRET=1, conftest)
    assert bench.main(["--dry-run", "--family", family, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"kernels-dry-run-{family}.json").read_text())["rows"]
    assert rows and {r["family"] for r in rows} == {family} and {r["backend"] for r in rows} == {which}
    assert {r["causal"] for r in rows} == {False, True}
    for row in rows:
        assert row["ms"] > 0 and row["floor_ms"] > 0 and row["tflops"] > 0
        assert abs(row["ratio_to_floor"] - row["ms"] / row["floor_ms"]) < 1e-6 * row["ratio_to_floor"]
    table = (tmp_path / f"kernels-dry-run-{family}.md").read_text()
    assert table.count(f" | {family} | ") == len(rows)


def test_quick_mode_times_every_family(tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "kernels-quick.json").read_text())["rows"]
    assert {r["family"] for r in rows} == set(bench.FAMILIES)
    # 2 lengths × 1 head dim × causal or not, for each pass of each family.
    passes = {(r["family"], r["pass"]) for r in rows if r["L"] == 256}  # names may hold sizes <= L
    assert len(rows) == 4 * len(passes) and {r["L"] for r in rows} == {256, 300}
    assert {("rowstats", "row_stats"), ("digest", "pooled_256"), ("digest", "pooled_256_one_head")} <= passes


def _imports(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(0, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("script", ["kernels.py", "compiled.py"])
def test_kernel_benchmarks_import_nothing_from_tests(script):
    """benchmarks/ installs as attnscope.benchmarks: no test helpers, sibling modules relatively."""
    found = _imports(REPO / "benchmarks" / script)
    local = {p.stem for p in (REPO / "tests").rglob("*.py")} | {"tests", "benchmarks"}
    absolute = {name.split(".")[0] for level, name in found if level == 0}
    assert not absolute & local, f"{script} imports {sorted(absolute & local)}"
