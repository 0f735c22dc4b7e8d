"""The markdown of `python -m benchmarks.gpu`: one page per stage and the one-page summary."""

from __future__ import annotations

import json


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    return str(value).replace("|", "\\|").replace("\n", " ")[:300]


def table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    if not rows:
        return ["(no rows)"]
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def _env_line(env: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in env.items() if v is not None)


def stage_markdown(data: dict) -> str:
    lines = [f"# gpu-{data['stage']}: {data.get('title', '')}", ""]
    lines += [f"**{data['status']}** in {data.get('wall_s', '-')} s of {data.get('budget_s')} s", ""]
    lines += [data.get("headline", ""), "", _env_line(data.get("environment", {})), ""]
    if data.get("error"):
        lines += [f"error: {data['error']}", ""]
    lines += [f"- {k}: {_cell(v)}" for k, v in data.get("facts", {}).items()] + [""]
    return "\n".join([*lines, *table(data.get("rows", [])), ""])


def summary_markdown(summary: dict, stages: dict[str, dict]) -> str:
    mode = "dry run (CPU, tiny sizes)" if summary["dry_run"] else "real run"
    lines = ["# GPU proof: summary", "", f"{mode}; {_env_line(summary['environment'])}", ""]
    lines += [f"{summary['wall_s']} s of a {summary['budget_s']} s budget; updated {summary['updated']}", ""]
    lines += [*table(summary["stages"], ["stage", "status", "wall_s", "budget_s", "headline"]), ""]
    kernels = stages.get("kernels", {}).get("rows", [])
    if kernels:
        lines += [
            "## Kernels: × the issue's floor max(2·pairs·d / 790e12, pairs / 3.9e12) and TFLOP/s, by family",
            "",
        ]
        by: dict = {}
        for r in kernels:
            by.setdefault(r["family"], []).append(r)
        rows = []
        for family, rs in by.items():
            top = max(rs, key=lambda r: r["L"] * r["d"])
            rows.append(
                {
                    "family": family,
                    "passes": len(rs),
                    "best × floor": min(r["ratio_to_issue_floor"] for r in rs),
                    "worst × floor": max(r["ratio_to_issue_floor"] for r in rs),
                    "peak TFLOP/s": max(r["tflops"] for r in rs),
                    f"× floor at L {top['L']} d {top['d']}": ", ".join(
                        f"{r['pass']}{' causal' if r['causal'] else ''} {r['ratio_to_issue_floor']:.3g}"
                        for r in rs
                        if r["L"] == top["L"] and r["d"] == top["d"]
                    ),
                }
            )
        lines += [*table(rows), ""]
    e2e = stages.get("e2e", {}).get("rows", [])
    if e2e:
        keep = ["model", "L", "attnscope_s", "sdpa_s", "eager_s", "attnscope/sdpa_time", "to_host_MiB"]
        lines += ["## End to end (seconds; eager's status where it did not run)", "", *table(e2e, keep), ""]
    failures = stages.get("pytest", {}).get("rows", [])
    if failures and not summary["dry_run"]:
        lines += ["## pytest failures (first 5)", "", *table(failures[:5]), ""]
    return "\n".join(lines)
