"""The parent of `python -m benchmarks.gpu`: runs each stage as a child process under its budget,
writes each stage's JSON and markdown as it ends, and the summary after every stage.

Standard library only: it must run before the install stage and must not touch the GPU itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

from .record import REPO, Record, write_json
from .report import stage_markdown, summary_markdown
from .stages import STAGES

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_BUDGET = 510  # seconds: a 9-minute device call (540 s) with 30 s to spare
#: The facts of the env stage that every results file repeats.
ENV_KEYS = ("gpu", "driver", "gpu_memory_gib", "compute_capability", "torch", "triton", "transformers")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def base_environment() -> dict:
    """The commit from git, else ATTNSCOPE_COMMIT (the device machine gets no .git), else 'unknown'."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    else:
        commit = os.environ.get("ATTNSCOPE_COMMIT") or "unknown"
    return {"commit": commit, "dirty": dirty, "date": _now(), "python": sys.version.split()[0]}


# ---- child ---------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """If the parent dies (the device call cut with SIGKILL), end this stage's whole group."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def child(name: str, out: Path, dry_run: bool, deadline: float) -> int:
    _die_with_parent()
    rec = Record(out, name, dry_run, deadline)
    rec.save()
    try:
        STAGES[name].body(rec, dry_run)
    except Exception as e:
        traceback.print_exc()
        rec.data["error"] = f"{type(e).__name__}: {e}"[:1000]
        rec.finish("failed")
        return 1
    if rec.data["status"] == "running":
        rec.finish()
    return 0


# ---- parent --------------------------------------------------------------------------------------
_current: list[subprocess.Popen] = []


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group, SIGKILL 5 s later: its grandchildren (e2e's measuring
    processes, pytest's workers) go with it, so a hung kernel frees the GPU for the next stage."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader ended; make sure none of its group stays
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _on_signal(signum, frame) -> None:
    for proc in _current:
        _kill_group(proc)
    raise SystemExit(128 + signum)


def run_stage(name: str, out: Path, dry_run: bool, budget: float) -> tuple[int | None, float]:
    """(return code or None when cut at the budget, wall seconds)."""
    stage = STAGES[name]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if dry_run:
        env.update(stage.dry_env or {})
    else:  # the compiled kernels, never the interpreter
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", name, "--out", str(out)]
    cmd += ["--deadline", repr(time.time() + budget)] + (["--dry-run"] if dry_run else [])
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    t0 = time.perf_counter()
    with open(out / "gpu-logs" / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, **group)
        _current.append(proc)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            rc = None
        _kill_group(proc)
        _current.remove(proc)
    return rc, time.perf_counter() - t0


def finalize(name: str, out: Path, env: dict, budget: float, rc: int | None, wall: float | None, status=None):
    """Complete the stage's JSON (status, times, environment) and write its markdown."""
    path = out / f"gpu-{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"stage": name, "facts": {}, "rows": []}
    data.update(title=STAGES[name].title, budget_s=round(budget, 1), environment=env)
    data["wall_s"] = round(wall, 1) if wall is not None else None
    if status is not None:
        data["status"] = status
    elif rc is None:
        data["status"] = "timeout"
        data["error"] = f"cut at its budget of {budget:.0f} s; rows so far kept"
    elif rc != 0 or data.get("status") in (None, "running"):
        data["status"] = "failed"
        log = (out / "gpu-logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()
        data.setdefault("error", f"exit code {rc}: " + " / ".join(log[-3:])[:1000])
    try:
        data["headline"] = "" if data["status"].startswith("skipped") else STAGES[name].headline(data)
    except Exception as e:  # a partial record may lack what the headline reads
        data["headline"] = f"(no headline: {type(e).__name__}: {e})"
    write_json(path, data)
    path.with_suffix(".md").write_text(stage_markdown(data))
    return data


def bundle(out: Path) -> None:
    """Copy the summary and a tarball of every gpu-* file into $OUT, the folder the device tool
    brings back (at most 8 files: hence one archive, not one file per stage)."""
    dest = os.environ.get("OUT")
    if not dest or Path(dest).resolve() == out.resolve():
        return
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "gpu-results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(out.glob("gpu-*")):
            if not path.name.endswith(".tmp"):
                tar.add(path, arcname=f"gpu-results/{path.name}")
    os.replace(tmp, dest / "gpu-results.tar.gz")
    for name in ("gpu-summary.md", "gpu-summary.json"):
        (dest / f"{name}.tmp").write_bytes((out / name).read_bytes())
        os.replace(dest / f"{name}.tmp", dest / name)


def _report(out: Path, summary: dict, done: dict[str, dict], start: float) -> None:
    """Rewrite the summary (JSON and page) with the stages done so far, and bring it to $OUT."""
    keep = ("stage", "title", "status", "wall_s", "budget_s", "headline")
    summary["stages"] = [
        {k: done[s["stage"]].get(k) for k in keep} if s["stage"] in done else s for s in summary["stages"]
    ]
    summary.update(updated=_now(), wall_s=round(time.perf_counter() - start, 1))
    write_json(out / "gpu-summary.json", summary)
    (out / "gpu-summary.md").write_text(summary_markdown(summary, done))
    bundle(out)


def _cuda_seen() -> bool:
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    try:
        p = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return p.stdout.strip() == "True"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=(sys.modules[__package__].__doc__ or "").splitlines()[0],
        epilog="stages: " + ", ".join(f"{s.name} ({s.budget_s:g} s)" for s in STAGES.values() if s.default),
    )
    parser.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on the CPU")
    parser.add_argument(
        "--out", type=Path, help="results folder (default: benchmarks/results; dry run: a new temporary one)"
    )
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for the whole run")
    parser.add_argument("--stages", help="comma-separated stages to run, in order (default: all)")
    parser.add_argument(
        "--stage-budget", action="append", default=[], metavar="NAME=SECONDS", help="one stage's budget"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.out, args.dry_run, args.deadline)

    names = args.stages.split(",") if args.stages else [s.name for s in STAGES.values() if s.default]
    budgets = {name: STAGES[name].budget_s for name in STAGES}
    given = dict(item.partition("=")[::2] for item in args.stage_budget)
    budgets.update({name: float(seconds) for name, seconds in given.items()})
    unknown = sorted((set(names) | set(budgets)) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    if not args.dry_run and not _cuda_seen():  # before anything is written over committed results
        print("benchmarks.gpu: torch sees no CUDA GPU; on a CPU use --dry-run", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="attnscope-gpu-dry-run-")) if args.dry_run else RESULTS)
    (out / "gpu-logs").mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a cut run takes its stage's processes with it
        signal.signal(sig, _on_signal)

    start = time.perf_counter()
    env = base_environment()
    summary: dict = {"dry_run": args.dry_run, "budget_s": args.budget, "environment": env, "stages": []}
    summary["stages"] = [{"stage": n, "status": "pending", "budget_s": budgets[n]} for n in names]
    done: dict[str, dict] = {}
    print(f"benchmarks.gpu: {'dry run' if args.dry_run else 'real run'} into {out}", flush=True)
    for i, name in enumerate(names):
        left = args.budget - (time.perf_counter() - start)
        budget = min(budgets[name], left)
        if STAGES[name].takes_slack and name not in given:  # what earlier stages left unused
            budget = max(budget, left - sum(budgets[n] for n in names[i + 1 :]))
        skip = None
        if budget < 1:
            skip = "skipped: the run's budget is spent"
        elif not args.dry_run and "env" in done and done["env"].get("facts", {}).get("gpu") is None:
            skip = "skipped: no CUDA GPU (on a CPU use --dry-run)"
        if skip:
            data = finalize(name, out, env, budgets[name], None, None, status=skip)
        else:
            t0 = time.perf_counter()
            try:
                rc, wall = run_stage(name, out, args.dry_run, budget)
            except SystemExit:  # SIGTERM or Ctrl-C: the stage is already killed; report, then go
                stopped = "stopped: the run was interrupted"
                done[name] = finalize(name, out, env, budget, None, time.perf_counter() - t0, status=stopped)
                _report(out, summary, done, start)
                raise
            data = finalize(name, out, env, budget, rc, wall)
        done[name] = data
        if name == "env":
            env.update({k: data.get("facts", {}).get(k) for k in ENV_KEYS})
        _report(out, summary, done, start)
        print(f"{name}: {data['status']} in {data['wall_s']} s: {data.get('headline', '')}", flush=True)
    # The device tool returns the end of the output: the summary's page is the last thing printed.
    print(f"wrote {out / 'gpu-summary.md'}\n\n{(out / 'gpu-summary.md').read_text()}", flush=True)
    return 0 if all(s["status"] == "ok" for s in summary["stages"]) else 1
