"""A pytest plugin (``-p benchmarks.gpu.pytest_log``) that appends each test's outcome to the
JSON-lines file named by ATTNSCOPE_PYTEST_LOG as it happens, so a run killed at its budget still
says what passed. Under pytest-xdist only the controller writes (it receives every report)."""

from __future__ import annotations

import json
import os

import pytest

_config: list = []  # this process's pytest config, for the hooks that are not handed it


def _write(config, event: dict) -> None:
    path = os.environ.get("ATTNSCOPE_PYTEST_LOG")
    if path and not hasattr(config, "workerinput"):  # an xdist worker: the controller writes
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def _message(report) -> str:
    """The failure's own line ('AssertionError: ...'), else the last line of its report."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr or "").strip()
    return " ".join(text.splitlines()[-1:] if crash is None else text.split())[:300]


@pytest.hookimpl
def pytest_configure(config) -> None:
    _config.append(config)


def pytest_collection_finish(session) -> None:
    if session.items:
        _write(session.config, {"event": "collected", "n": len(session.items)})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids) -> None:
    if _config and node.gateway.id == "gw0":  # every worker collects the same tests
        _write(_config[0], {"event": "collected", "n": len(ids)})


def pytest_collectreport(report) -> None:
    if report.failed and _config:
        _write(_config[0], {"event": "collect-error", "nodeid": report.nodeid, "message": _message(report)})


def pytest_runtest_logreport(report) -> None:
    """One event per test: its call's outcome, or its setup's when that failed or skipped, or
    'error' when its teardown failed."""
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = report.outcome if report.when == "call" else "error" if report.failed else "skipped"
    elif report.when == "teardown" and report.failed:
        outcome = "error"
    else:
        return
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    event = {"event": "test", "nodeid": report.nodeid, "outcome": outcome, "when": report.when}
    event.update(duration=round(report.duration, 3), message=_message(report) if report.failed else "")
    if _config:
        _write(_config[0], event)
