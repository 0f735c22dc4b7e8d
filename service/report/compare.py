"""Two reports side by side (two checkpoints, two models of one family, or two datasets): per
head and statistic the difference of means B − A with its standard error and z, the heads that
changed most, the heads whose class changed, and the `--fail-if` rules that hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .rules import evaluate, parse_rule

#: Heads listed per statistic as having changed most.
CHANGED_MOST = 5


def load_report(path: str | Path) -> tuple[Path, dict]:
    """A report folder (or its report.json) and its content."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no report.json (make one with attnscope report --data ...)")
    report = json.loads(file.read_text())
    if not report.get("head_statistics"):
        raise ValueError(f"{file} has no traced documents to compare")
    return file, report


def _z(diff: float, se: float) -> float | None:
    if diff == 0:
        return 0.0
    return diff / se if se > 0 else None  # JSON has no infinity: a change with no spread is null


def compare_reports(a: dict, b: dict) -> dict:
    """The comparison of report dicts `a` and `b` (same layers × heads), without rules."""
    if (a["layers"], a["heads"]) != (b["layers"], b["heads"]):
        raise ValueError(
            f"the reports have different shapes: A {a['layers']} layers × {a['heads']} heads, "
            f"B {b['layers']} × {b['heads']}"
        )
    na, nb = a["documents"]["traced"], b["documents"]["traced"]
    stats = {}
    for name in a["head_statistics"]:
        if name not in b["head_statistics"]:
            continue
        ea, eb = a["head_statistics"][name], b["head_statistics"][name]
        diff, se, z, ranked = [], [], [], []
        for layer in range(a["layers"]):
            drow, srow, zrow = [], [], []
            for head in range(a["heads"]):
                d = eb["mean"][layer][head] - ea["mean"][layer][head]
                s = math.sqrt(ea["std"][layer][head] ** 2 / na + eb["std"][layer][head] ** 2 / nb)
                drow.append(d)
                srow.append(s)
                zrow.append(_z(d, s))
                ranked.append((-abs(d), layer, head))
            diff.append(drow)
            se.append(srow)
            z.append(zrow)
        ranked.sort()
        stats[name] = {
            "difference": diff,
            "standard_error": se,
            "z": z,
            "changed_most": [
                {
                    "layer": layer,
                    "head": head,
                    "a": ea["mean"][layer][head],
                    "b": eb["mean"][layer][head],
                    "difference": diff[layer][head],
                    "a_std": ea["std"][layer][head],
                    "b_std": eb["std"][layer][head],
                    "z": z[layer][head],
                }
                for _, layer, head in ranked[:CHANGED_MOST]
            ],
        }
    ma, mb = a["classes"]["modal"], b["classes"]["modal"]
    class_changes = [
        {"layer": layer, "head": head, "a": ma[layer][head], "b": mb[layer][head]}
        for layer in range(a["layers"])
        for head in range(a["heads"])
        if ma[layer][head] != mb[layer][head]
    ]
    return {"layers": a["layers"], "heads": a["heads"], "statistics": stats, "class_changes": class_changes}


def apply_rules(rules: list[str], a: dict, b: dict) -> list[dict]:
    """Each rule with the heads where it holds (every rule listed, holding or not)."""
    classes = tuple(a["classes"]["counts"])
    parsed = [parse_rule(r, classes) for r in rules]  # all parsed first: a typo fails before any output
    return [
        {
            "rule": rule.text,
            "heads": evaluate(
                rule,
                a["head_statistics"][rule.stat]["mean"],
                b["head_statistics"][rule.stat]["mean"],
                a["classes"]["modal"],
            ),
        }
        for rule in parsed
    ]


def compare(a_path: str, b_path: str, out: Path, rules: list[str]) -> dict:
    """Write compare.json and compare.html into `out`; the result says which rules hold."""
    from .html import compare_page

    a_file, a = load_report(a_path)
    b_file, b = load_report(b_path)
    checked = apply_rules(rules, a, b)
    result = {
        "a": {"path": str(a_file), "model": a["model"], "documents": a["documents"]["traced"]},
        "b": {"path": str(b_file), "model": b["model"], "documents": b["documents"]["traced"]},
        **compare_reports(a, b),
        "rules": checked,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compare.html").write_text(compare_page(result), encoding="utf-8")
    return result
