"""A stage's results file, written as the stage goes (benchmarks/gpu/run.py says how it is run)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
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
        from attnscope.kernels import autotune

        if autotune.skip_interior_default():  # ATTNSCOPE_SKIP_INTERIOR=1 as the stage starts
            self.data["facts"]["skip_interior"] = True

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
        from attnscope.kernels import autotune

        if autotune.autotune_on():  # ATTNSCOPE_AUTOTUNE=1: the launch shapes timed and kept
            self.data["facts"]["autotune"] = autotune.chosen_configs()
        write_json(self.path, self.data)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def tail(text: str, lines: int = 3) -> str:
    return " / ".join(text.strip().splitlines()[-lines:])[:500]
