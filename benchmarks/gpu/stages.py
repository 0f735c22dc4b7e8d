"""The stages of `python -m benchmarks.gpu`: what each one runs (in a child process of its own) and
the one line the summary gives it.

Nothing in this package imports torch or attnscope at module level: the parent only schedules and
reports (and runs before the install stage), and each stage's body imports what it needs inside its
own process. A new stage is a body `(Record, dry_run) -> None` and a headline `(stage json) -> str`
in `STAGES`; a new view's cost is a `View` in `measures.VIEWS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .checks import env_headline, env_stage, install_headline, install_stage, pytest_headline, pytest_stage
from .measures import (
    e2e_headline,
    e2e_stage,
    hang_stage,
    kernels_headline,
    kernels_stage,
    tune_headline,
    tune_stage,
    views_headline,
    views_stage,
)
from .record import Record


@dataclass
class Stage:
    name: str
    title: str
    budget_s: float  # the real run's; the dry run's sizes finish far inside it
    body: Callable[[Record, bool], None]
    headline: Callable[[dict], str]
    default: bool = True
    dry_env: dict | None = None  # environment the dry run sets for this stage
    takes_slack: bool = False  # also gets the seconds earlier stages left unused (see run.main)


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
        Stage("e2e", "end-to-end benchmark", 150, e2e_stage, e2e_headline, takes_slack=True),
        # 60 s: the digest kernel's variants with token ids, row weights and blocks compile first,
        # then a generation traced (GPT-2 small, 4k prompt) and a model split over devices.
        Stage(
            "views",
            "costs of issues 5-7's views",
            60,
            views_stage,
            views_headline,
            dry_env={"TRITON_INTERPRET": "1", "ATTNSCOPE_BACKEND": "triton"},
        ),
        # Not in the default run: the launch-shape variants (kernels/autotune.py), for a session
        # that has the proof and time left (issue 18 step 4).
        Stage(
            "tune",
            "launch shapes: defaults, SKIP_INTERIOR, autotuned",
            240,
            tune_stage,
            tune_headline,
            default=False,
            dry_env={"TRITON_INTERPRET": "1", "ATTNSCOPE_BACKEND": "triton"},
        ),
        Stage("hang", "a stage that never ends (tests only)", 5, hang_stage, lambda d: "held", default=False),
    ]
}
