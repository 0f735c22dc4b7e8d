"""The stages that check the GPU machine: env (what it is), install (the package installs there
without the network) and pytest (the tests marked cuda pass there). Each body runs in a child
process of its own and imports what it needs there (see stages.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .record import REPO, Record, tail, version


# ---- env -----------------------------------------------------------------------------------------
def env_stage(rec: Record, dry_run: bool) -> None:
    import torch

    facts: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "ATTNSCOPE_BACKEND": os.environ.get("ATTNSCOPE_BACKEND"),
    }
    packages = ("triton", "transformers", "accelerate", "numpy", "pytest", "pytest-timeout", "pytest-xdist")
    facts.update({package: version(package) for package in packages})
    facts["gpu"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=p.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
            compute_capability=f"{p.major}.{p.minor}",
            l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1),
        )
    facts["driver"] = None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        facts["nvidia_smi"] = "not found"
    else:
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu"
        try:
            p = subprocess.run(
                [smi, f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            facts["nvidia_smi"] = p.stdout.strip() or tail(p.stderr)
            if p.returncode == 0 and p.stdout.strip():
                facts["driver"] = p.stdout.split(",")[1].strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            facts["nvidia_smi"] = f"failed: {e}"
    for key in ("gpu", "driver", "torch", "triton", "transformers", "cuda_available"):
        rec.row({"what": key, "value": facts[key]})
    rec.finish(**facts)


def env_headline(data: dict) -> str:
    f = data.get("facts", {})
    gpu = f.get("gpu") or "no CUDA GPU"
    return (
        f"{gpu}, driver {f.get('driver')}, torch {f.get('torch')}, triton {f.get('triton')}, "
        f"transformers {f.get('transformers')}"
    )


# ---- install -------------------------------------------------------------------------------------
def install_stage(rec: Record, dry_run: bool) -> None:
    """pip installs the checkout without the network (--no-index: a fetch would fail, not hang),
    then attnscope is imported from another folder with the checkout off the path."""
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    pip += ["--dry-run", "-e", "."] if dry_run else ["-e", "."]  # dry: the venv stays as it is
    code = "import attnscope, attnscope.kernels, attnscope.benchmarks; print(attnscope.__version__, attnscope.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = True
    with tempfile.TemporaryDirectory() as elsewhere:
        for step, cmd, cwd in (
            ("pip install", pip, REPO),
            ("import", [sys.executable, "-c", code], elsewhere),
        ):
            t0 = time.perf_counter()
            p = subprocess.run(
                cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=max(1, rec.left() - 2)
            )
            print(p.stdout, p.stderr, sep="\n", flush=True)
            rec.row(
                {
                    "step": step,
                    "command": " ".join(["python", *cmd[1:]]),
                    "rc": p.returncode,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "output": tail(p.stdout if p.returncode == 0 else p.stderr or p.stdout, 1),
                }
            )
            ok = ok and p.returncode == 0
    rec.finish("ok" if ok else "failed")


def install_headline(data: dict) -> str:
    rows = data.get("rows", [])
    bad = [r["step"] for r in rows if r.get("rc") != 0]
    if bad or not rows:
        return "failed: " + ", ".join(bad or ["nothing ran"])
    return f"pip install ok ({rows[0]['seconds']} s); imports {rows[-1]['output']}"


# ---- pytest --------------------------------------------------------------------------------------
PYTEST = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]


def cuda_test_files() -> list[str]:
    """The test modules that mark a test cuda: only these are collected, so a module needing a
    package the GPU machine lacks (grpcio-health-checking, playwright, ...) cannot fail the stage."""
    files = sorted(p for p in (REPO / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text())
    return [str(p.relative_to(REPO)) for p in files]


def pytest_stage(rec: Record, dry_run: bool) -> None:
    """Real run: `pytest -m cuda` (the compiled Triton kernels on the GPU; a model test marked cuda
    runs too). Dry run: the same selection collected, not run (it proves the selection exists)."""
    logs = rec.out / "gpu-logs"
    if dry_run:
        p = subprocess.run(
            [*PYTEST, "--collect-only", *cuda_test_files()],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=rec.left() - 2,
        )
        print(p.stdout, p.stderr, sep="\n", flush=True)
        ids = [line for line in p.stdout.splitlines() if "::" in line]
        for module, n in Counter(i.split("::")[0] for i in ids).items():
            rec.row({"module": module, "cuda_tests": n})
        ok = p.returncode == 0 and bool(ids)
        rec.finish("ok" if ok else "failed", collected=len(ids), command=" ".join(["python", *p.args[1:]]))
        return
    outcomes = logs / "pytest-outcomes.jsonl"
    outcomes.unlink(missing_ok=True)
    cmd = [*PYTEST, "--maxfail=10", "-rfE", "-p", "benchmarks.gpu.pytest_log", *cuda_test_files()]
    if importlib.util.find_spec("pytest_timeout"):
        cmd.append("--timeout=120")  # one hung test fails alone; the stage's budget bounds the rest
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", str(os.cpu_count() or 1)]  # compiling ~1500 kernel variants dominates: in parallel
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ATTNSCOPE_BACKEND")}
    env["ATTNSCOPE_PYTEST_LOG"] = str(outcomes)
    rec.fact(command=" ".join(["python", *cmd[1:]]))
    with open(logs / "pytest-output.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:  # tally as it goes: a cut stage still says how far it got
            time.sleep(2)
            _tally(rec, outcomes)
    _tally(rec, outcomes)
    last = (logs / "pytest-output.log").read_text().strip().splitlines()[-1:] or [""]
    # 0: all passed; 1: some failed; 2: interrupted (--maxfail); 5: nothing collected
    passed = rec.data["facts"]["counts"].get("passed", 0)
    ok = proc.returncode == 0 and passed > 0  # all skipped would mean the GPU went unseen
    rec.finish("ok" if ok else "failed", rc=proc.returncode, result_line=last[0])


def _tally(rec: Record, outcomes: Path) -> None:
    events = [json.loads(line) for line in outcomes.read_text().splitlines()] if outcomes.exists() else []
    tests = [e for e in events if e["event"] == "test"]
    counts = Counter(e["outcome"] for e in tests)
    collected = sum(e.get("n", 0) for e in events if e["event"] == "collected")
    errors = [e for e in events if e["event"] == "collect-error"]
    rec.data["facts"].update(
        counts=dict(counts),
        collected=collected,
        collection_errors=[e["nodeid"] for e in errors],
        slowest={e["nodeid"]: e["duration"] for e in sorted(tests, key=lambda e: -e["duration"])[:3]},
    )
    rec.data["rows"] = [
        {"test": e["nodeid"], "outcome": e["outcome"], "message": e["message"]}
        for e in [*errors, *tests]
        if e.get("outcome") in ("failed", "error", None)
    ][:50]
    rec.save()


def pytest_headline(data: dict) -> str:
    f = data.get("facts", {})
    if data.get("dry_run"):
        modules = len(data.get("rows", []))
        return f"{f.get('collected', 0)} cuda tests collected in {modules} modules (not run)"
    c = f.get("counts", {})
    text = ", ".join(f"{c.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
    errors = f.get("collection_errors") or []
    return text + (f"; {len(errors)} modules not collected" if errors else "")
