"""Every Triton kernel family compiles for Hopper (sm_90) and fits its shared memory, without a GPU.

The interpreter (the rest of the kernel tests) never runs Triton's compiler, so a kernel can
pass every CPU test and still fail to build on the GPU (it happened: a join/reshape form of the
fused top-k crashed Triton's layout pass). `benchmarks.compiled` builds the cubins with Triton's
bundled ptxas, in a process of its own (no TRITON_INTERPRET, a stand-in driver naming the target).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build has no NVIDIA backend (not Linux x86-64)")
def test_every_kernel_compiles_for_sm90_within_its_shared_memory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from an earlier run's cache
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.compiled", "--quick", "--out", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "compiled-sm90-quick.json").read_text())["rows"]
    built = {(r["kernel"], r["dtype"], r["d"]) for r in rows}
    kernels = {"row_stats", "digest", "tile", "neuron"}
    variants = {("fp32", 256, "top-16"), ("bf16", 256, "top-128"), ("fp16", 64, "top-128")}
    assert built == {(k, dt, d) for dt, d, topk in variants for k in kernels | {topk}}
    for row in rows:
        assert 0 < row["shared_bytes"] <= row["shared_limit"] == 232448, row
        assert 0 < row["registers"] <= 255, row
        # The default launch shapes are the compile report's: no register spills (kernels/autotune.py).
        assert row["stack_bytes"] == 0 and row["local_bytes"] == 0, row
    # The launch shapes of kernels/autotune.loop_config reached the compiler.
    widest = {r["kernel"]: r for r in rows if r["dtype"] == "fp32"}
    assert widest["row_stats"]["num_stages"] == 2 and widest["row_stats"]["num_warps"] == 8
    assert (tmp_path / "compiled-sm90-quick.md").read_text().count("| row_stats |") == 3
