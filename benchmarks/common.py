"""What every benchmark records beside its numbers: the machine, the versions, the commit."""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def proc_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (e.g. "VmHWM", "VmRSS"), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def environment() -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "commit": commit,
    }


def median_seconds(fn: Callable[[], object], warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of `fn`; CUDA events on the GPU, perf_counter elsewhere."""
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def _timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired_seconds(
    fn: Callable[[], object], other: Callable[[], object], warmup: int = 1, repeats: int = 5
) -> tuple[float, float, float]:
    """(median time of `fn`, median time of `other`, median of the pairwise ratios fn / other),
    the two run in turn in this process: on a shared machine whose speed drifts, each ratio
    compares runs made under the same load."""
    for _ in range(warmup):
        fn()
        other()
    pairs = [(_timed(fn), _timed(other)) for _ in range(repeats)]
    return (
        statistics.median(a for a, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(a / b for a, b in pairs),
    )


def write(
    name: str,
    env: dict,
    rows: list[dict],
    out_dir: Path,
    doc: str,
    columns: list[tuple[str, str]] | None = None,
) -> Path:
    """Write `name`.json (env + rows) and `name`.md: the third paragraph of the benchmark's module
    docstring `doc` (what was measured, after its title and usage), then a table of `columns`
    ((key, header) pairs; default: every key of the first row)."""
    columns = columns or [(k, k) for k in rows[0]]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    notes = " ".join(doc.split("\n\n")[2].split())
    lines = [f"# {name}", "", ", ".join(f"{k}: {v}" for k, v in env.items()), "", notes, ""]
    lines.append("| " + " | ".join(h for _, h in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        values = [row.get(k, "") for k, _ in columns]  # a run that failed has no figures for some columns
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {md} and {md.with_suffix('.json')}")
    return md
