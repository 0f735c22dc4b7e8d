"""The self-contained report.html and compare.html: inline CSS and SVG (svg.py), no script and no
external file, so a page opens offline and anywhere (a CI artifact, an e-mail)."""

from __future__ import annotations

from html import escape

from . import svg

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
svg text { font-size: 11px; fill: #333; }
svg .axis { stroke: #999; } svg .line { fill: none; stroke: #1f77b4; stroke-width: 2; }
svg circle { fill: #1f77b4; } svg .bar { fill: #1f77b4; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
td.w { white-space: normal; min-width: 14em; }
td.l, th.l { text-align: left; } .muted { color: #777; }
"""
#: One color per head class (svg cells of the class map).
CLASS_COLORS = {
    "previous-token": "#1f77b4",
    "induction": "#d62728",
    "duplicate-token": "#9467bd",
    "first-token": "#ff7f0e",
    "self": "#2ca02c",
    "local": "#17becf",
    "diffuse": "#c7c7c7",
    "mixed": "#8c564b",
}
#: Bad documents listed on the page (report.json lists them all).
BAD_SHOWN = 200


def _page(title: str, body: list[str]) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def _f(v: float) -> str:
    return f"{v:.3f}"


def _z(v: float | None) -> str:
    return "∞" if v is None else f"{v:+.3g}"  # a change where neither report has any spread


def report_page(report: dict) -> str:
    """report.html of a report.json dict."""
    docs = report["documents"]
    body = [
        f"<h1>attnscope report: {escape(report['model'])}</h1>",
        f"<p>{docs['traced']} documents traced ({report['tokens']:,} tokens), {docs['bad']} skipped as bad; "
        f"{report['layers']} layers × {report['heads']} heads.</p>",
    ]
    stats = report["head_statistics"]
    if stats:
        body.append("<h2>Statistics per layer</h2><p class='muted'>mean over heads and documents</p>")
        body.append(
            '<div class="grid">'
            + "".join(svg.line_chart(name, entry["per_layer_mean"]) for name, entry in stats.items())
            + "</div>"
        )
        body.append(
            "<h2>Layers × heads</h2><p class='muted'>rows: layers, columns: heads; mean over documents</p>"
        )
        maps = []
        for name, entry in stats.items():
            std = entry["std"]
            maps.append(
                svg.value_map(
                    name,
                    entry["mean"],
                    lambda layer, head, v, name=name, std=std: (
                        f"L{layer}.H{head} {name}: mean {v:.4g} ± {std[layer][head]:.3g}"
                    ),
                )
            )
        body.append('<div class="grid">' + "".join(maps) + "</div>")
        classes = report["classes"]
        body.append("<h2>Head classes</h2>")
        colors = [[CLASS_COLORS[c] for c in row] for row in classes["modal"]]
        tips = [
            [
                f"L{layer}.H{head}: {c} in {classes['consistency'][layer][head]:.0%} of documents"
                for head, c in enumerate(row)
            ]
            for layer, row in enumerate(classes["modal"])
        ]
        body.append(
            '<div class="grid">'
            + svg.head_map("most frequent class per head", colors, tips)
            + svg.bar_chart(
                "heads per class (the map's colors)", classes["heads_per_class"], colors=CLASS_COLORS
            )
            + svg.value_map(
                "class consistency",
                classes["consistency"],
                lambda layer, head, v: f"L{layer}.H{head}: {v:.0%} of documents",
            )
            + "</div>"
        )
        body.append(_head_table(report))
    body.append(_bad_table(report))
    return _page(f"attnscope report: {report['model']}", body)


def _head_table(report: dict) -> str:
    stats = report["head_statistics"]
    classes = report["classes"]
    head = "".join(f"<th>{escape(n)}</th>" for n in stats)
    rows = [
        "<h2>Heads</h2><p class='muted'>mean ± standard deviation over documents; the documents "
        "where the head is most and least its class</p><table><tr><th>layer</th><th>head</th>"
        f"<th class='l'>class</th><th>consistency</th>{head}<th class='l'>most</th><th class='l'>least</th></tr>"
    ]
    for layer in range(report["layers"]):
        for h in range(report["heads"]):
            cells = "".join(
                f"<td>{_f(e['mean'][layer][h])} ± {_f(e['std'][layer][h])}</td>" for e in stats.values()
            )
            ext = report["extremes"][layer][h]
            ends = [
                ", ".join(f"{escape(d['doc_id'].rsplit('/', 1)[-1])} ({d['value']:.3g})" for d in ext[side])
                for side in ("most", "least")
            ]
            rows.append(
                f"<tr><td>{layer}</td><td>{h}</td><td class='l'>{escape(classes['modal'][layer][h])}</td>"
                f"<td>{classes['consistency'][layer][h]:.0%}</td>{cells}"
                f"<td class='l w'>{ext['statistic']}: {ends[0]}</td><td class='l w'>{ends[1]}</td></tr>"
            )
    rows.append("</table>")
    return "".join(rows)


def _bad_table(report: dict) -> str:
    bad = report["bad_documents"]
    if not bad:
        return "<h2>Bad documents</h2><p>none</p>"
    rows = [
        f"<h2>Bad documents ({len(bad)})</h2><table><tr><th class='l'>document</th><th class='l'>reason</th></tr>"
    ]
    rows += [
        f"<tr><td class='l'>{escape(d['doc_id'])}</td><td class='l'>{escape(d['reason'])}</td></tr>"
        for d in bad[:BAD_SHOWN]
    ]
    rows.append("</table>")
    if len(bad) > BAD_SHOWN:
        rows.append(f"<p class='muted'>… and {len(bad) - BAD_SHOWN} more in report.json</p>")
    return "".join(rows)


def compare_page(comparison: dict) -> str:
    """compare.html of a compare.json dict."""
    body = [
        f"<h1>attnscope compare: {escape(comparison['a']['model'])} → {escape(comparison['b']['model'])}</h1>",
        f"<p>A: {escape(comparison['a']['path'])} ({comparison['a']['documents']} documents); "
        f"B: {escape(comparison['b']['path'])} ({comparison['b']['documents']} documents). "
        "Differences are B − A of the per-head means; z = difference / its standard error.</p>",
    ]
    failed = comparison.get("rules", [])
    if failed:
        body.append("<h2>Rules</h2><table><tr><th class='l'>rule</th><th class='l'>holds on</th></tr>")
        for r in failed:
            where = ", ".join(r["heads"]) if r["heads"] else "no head"
            body.append(f"<tr><td class='l'>{escape(r['rule'])}</td><td class='l'>{escape(where)}</td></tr>")
        body.append("</table>")
    body.append("<h2>Difference maps</h2><p class='muted'>rows: layers, columns: heads; blue: lower in B</p>")
    maps = []
    for name, entry in comparison["statistics"].items():
        z = entry["z"]
        maps.append(
            svg.value_map(
                f"Δ {name}",
                entry["difference"],
                lambda layer, head, v, name=name, z=z: (
                    f"L{layer}.H{head} Δ{name} {v:+.4g} (z {_z(z[layer][head])})"
                ),
                signed=True,
            )
        )
    body.append('<div class="grid">' + "".join(maps) + "</div>")
    body.append(
        "<h2>Heads that changed most</h2><table><tr><th class='l'>statistic</th><th>head</th>"
        "<th>A mean</th><th>B mean</th><th>difference</th><th>z</th></tr>"
    )
    for name, entry in comparison["statistics"].items():
        for top in entry["changed_most"]:
            body.append(
                f"<tr><td class='l'>{escape(name)}</td><td>L{top['layer']}.H{top['head']}</td>"
                f"<td>{_f(top['a'])}</td><td>{_f(top['b'])}</td><td>{top['difference']:+.4f}</td>"
                f"<td>{_z(top['z'])}</td></tr>"
            )
    body.append("</table>")
    changed = comparison["class_changes"]
    body.append(f"<h2>Class changes ({len(changed)})</h2>")
    if changed:
        body.append("<table><tr><th>head</th><th class='l'>A</th><th class='l'>B</th></tr>")
        body += [
            f"<tr><td>L{c['layer']}.H{c['head']}</td><td class='l'>{c['a']}</td><td class='l'>{c['b']}</td></tr>"
            for c in changed
        ]
        body.append("</table>")
    return _page("attnscope compare", body)
