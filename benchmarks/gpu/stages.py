"""The stages of `python -m benchmarks.gpu`: what each one runs (in a child process of its own) and
the one line the summary gives it.

Nothing here imports torch or attnscope at module level: the parent only schedules and reports (and
runs before the install stage), and each stage's body imports what it needs inside its own process.
A new stage is a body `(Record, dry_run) -> None` and a headline `(stage json) -> str` in `STAGES`;
a new view cost is a `View` in `VIEWS`.
"""

from __future__ import annotations

import importlib.metadata
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a stage killed mid-write leaves the previous version, never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class Record:
    """A stage's gpu-<stage>.json, rewritten after every step so that a stage cut at its budget
    keeps what it finished. `rows` is the table its markdown shows; other keys stay in the JSON."""

    def __init__(self, out: Path, stage: str, dry_run: bool, deadline: float) -> None:
        self.out, self.deadline = out, deadline
        self.path = out / f"gpu-{stage}.json"
        self.data: dict = {"stage": stage, "status": "running", "dry_run": dry_run, "facts": {}, "rows": []}

    def left(self) -> float:
        """Seconds until the parent kills this stage."""
        return self.deadline - time.time()

    def fact(self, **facts) -> None:
        self.data["facts"].update(facts)
        self.save()

    def row(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def finish(self, status: str = "ok", **facts) -> None:
        self.data["facts"].update(facts)
        self.data["status"] = status
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tail(text: str, lines: int = 3) -> str:
    return " / ".join(text.strip().splitlines()[-lines:])[:500]


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
    facts.update({package: _version(package) for package in packages})
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
            facts["nvidia_smi"] = p.stdout.strip() or _tail(p.stderr)
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
                    "output": _tail(p.stdout if p.returncode == 0 else p.stderr or p.stdout, 1),
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


# ---- kernels -------------------------------------------------------------------------------------
#: The kernel stage's (lengths, head dims, heads, dtype, device, warm-ups, repeats): the issue's
#: sizes on the GPU; in the dry run tiny ones through the interpreter (TRITON_INTERPRET=1, set by
#: the parent).
KERNEL_SIZES = {
    False: ([4096, 16384, 32768], [64, 128], 16, "bfloat16", "cuda", 2, 7),
    True: ([64, 96], [16, 64], 2, "float32", "cpu", 0, 1),
}


def kernels_stage(rec: Record, dry_run: bool) -> None:
    """benchmarks/kernels.py's run(), one (L, d) at a time, smallest first, each row kept at once."""
    import torch

    from .. import kernels

    lengths, dims, heads, dtype, device, warmup, repeats = KERNEL_SIZES[dry_run]
    rec.fact(
        lengths=lengths,
        dims=dims,
        heads=heads,
        dtype=dtype,
        floor="per pass: max(2·pairs·d / 790e12, pairs / 3.9e12, bytes / 4.8e12) s (benchmarks/kernels.py)",
    )
    families = list(kernels.FAMILIES)
    for length in lengths:
        for d in dims:
            rows = kernels.run(families, [length], [d], heads, getattr(torch, dtype), device, warmup, repeats)
            for row in rows:
                rec.row(row)
    rec.finish()


def kernels_headline(data: dict) -> str:
    rows = data.get("rows", [])
    if not rows:
        return "no pass timed"
    ratios = [r["ratio_to_floor"] for r in rows]
    best = max(rows, key=lambda r: r["tflops"])
    return (
        f"{len(rows)} passes over {len({r['family'] for r in rows})} families; × floor "
        f"{min(ratios):.3g} to {max(ratios):.3g}; peak {best['tflops']:.3g} TFLOP/s "
        f"({best['pass']}, L {best['L']}, d {best['d']})"
    )


# ---- e2e -----------------------------------------------------------------------------------------
def e2e_plan(dry_run: bool) -> list[dict]:
    """Cheapest first, so that a cut stage loses the largest. GPT-2-small shapes to 32k and
    Llama-3-8B shapes to 128k, one timed run past 8k (each is seconds, and the stage has minutes)."""
    if dry_run:
        return [{"model": "gpt2-tiny", "length": n, "repeats": 1, "dtype": "float32"} for n in (64, 96)]
    sizes = [("gpt2-small", n) for n in (2048, 8192, 32768)]
    sizes += [("llama3-8b", n) for n in (8192, 32768, 131072)]
    return [
        {"model": m, "length": n, "repeats": 3 if n <= 8192 else 1, "dtype": "bfloat16"} for m, n in sizes
    ]


def _out_of_memory(row: dict) -> bool:
    return row["status"] == "out of memory" or "out of memory" in row["status"].lower()


def e2e_stage(rec: Record, dry_run: bool) -> None:
    """benchmarks/e2e.py's measure() per (model, length, method), each in its own process. Eager
    runs until it first runs out of memory on a model; its longer lengths are then not run."""
    from .. import e2e

    raw: list[dict] = []
    ran_out: dict[str, int] = {}
    for run in e2e_plan(dry_run):
        for method in ("attnscope", "sdpa", "eager"):
            spec = {**run, "method": method}
            if method == "eager" and run["model"] in ran_out:
                row = {**spec, "status": f"not run: eager ran out of memory at L={ran_out[run['model']]}"}
            elif rec.left() < 10:
                row = {**spec, "status": "not run: stage budget spent"}
            else:
                try:
                    row = e2e.measure(spec, timeout=int(rec.left() - 5))
                except subprocess.TimeoutExpired:
                    row = {**spec, "status": "timeout: stage budget spent"}
                if method == "eager" and _out_of_memory(row):
                    ran_out[run["model"]] = run["length"]
            print(json.dumps(row), flush=True)
            raw.append(row)
            rec.data["raw"] = raw
            rec.data["rows"] = e2e.ratios(raw)
            rec.save()
    done = all(r["status"] == "ok" or "out of memory" in r["status"] for r in raw)
    rec.finish("ok" if done else "incomplete")


def e2e_headline(data: dict) -> str:
    raw = data.get("raw", [])
    ok = sum(r["status"] == "ok" for r in raw)
    ran_out = [
        f"{r['model']} L {r['length']}"
        for r in raw
        if not r["status"].startswith("not run") and _out_of_memory(r)
    ]
    after = sum(r["status"].startswith("not run: eager ran out") for r in raw)
    text = f"{ok} of {len(raw)} measured"
    text += f"; eager out of memory from {', '.join(ran_out)} (longer not run)" if ran_out else ""
    other = len(raw) - ok - len(ran_out) - after
    text += f"; {other} timed out, failed or not run" if other else ""
    largest = {}
    for r in raw:
        if r["status"] == "ok":
            largest[r["model"], r["method"]] = r
    for model in dict.fromkeys(r["model"] for r in raw):
        ours = largest.get((model, "attnscope"))
        if ours:
            text += f"; {model} at L {ours['length']}: attnscope {ours['seconds']:.3g} s"
    return text


# ---- views (issues 5-6) --------------------------------------------------------------------------
@dataclass
class View:
    """A view whose cost the run reports: `measure(dry_run)` returns its row's figures (seconds,
    bytes, ...); None while the view is not built."""

    issue: int
    name: str
    measure: Callable[[bool], dict] | None = None


#: Issues 5 and 6's views do not exist yet: each gets its `measure` here once built.
VIEWS = [View(5, "issue 5's view"), View(6, "issue 6's view")]


def views_stage(rec: Record, dry_run: bool) -> None:
    for view in VIEWS:
        row = {"issue": view.issue, "view": view.name}
        if view.measure is None:
            rec.row({**row, "status": "not built yet"})
        else:
            rec.row({**row, "status": "ok", **view.measure(dry_run)})
    rec.finish()


def views_headline(data: dict) -> str:
    rows = data.get("rows", [])
    missing = [f"issue {r['issue']}" for r in rows if r["status"] == "not built yet"]
    built = len(rows) - len(missing)
    return f"{built} measured; not built yet: {', '.join(missing) or 'none'}"


# ---- hang (tests only) ---------------------------------------------------------------------------
def hang_stage(rec: Record, dry_run: bool) -> None:
    """Writes one row, then never ends: tests/test_benchmarks_gpu.py checks that it is cut."""
    rec.row({"step": "started", "pid": os.getpid()})
    while True:
        time.sleep(0.2)


@dataclass
class Stage:
    name: str
    title: str
    budget_s: float  # the real run's; the dry run's sizes finish far inside it
    body: Callable[[Record, bool], None]
    headline: Callable[[dict], str]
    default: bool = True
    dry_env: dict | None = None  # environment the dry run sets for this stage


#: In run order. Real-run budgets sum to 505 s, under the default total of 510 s (a 9-minute device
#: call leaves 30 s for the parent itself); see the module docstring of benchmarks/gpu.
STAGES = {
    s.name: s
    for s in [
        Stage("env", "environment", 15, env_stage, env_headline),
        Stage("install", "install without network", 30, install_stage, install_headline),
        Stage("pytest", "pytest -m cuda", 150, pytest_stage, pytest_headline),
        Stage(
            "kernels",
            "kernel benchmark",
            100,
            kernels_stage,
            kernels_headline,
            dry_env={"TRITON_INTERPRET": "1", "ATTNSCOPE_BACKEND": "triton"},
        ),
        Stage("e2e", "end-to-end benchmark", 200, e2e_stage, e2e_headline),
        Stage("views", "costs of issues 5-6's views", 10, views_stage, views_headline),
        Stage("hang", "a stage that never ends (tests only)", 5, hang_stage, lambda d: "held", default=False),
    ]
}
