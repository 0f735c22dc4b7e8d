"""Inline SVG for the report pages: a layers × heads map, a line chart per layer and a bar chart.
Plain SVG elements with <title> tooltips, no script, no external file: the pages open offline."""

from __future__ import annotations

import math
from html import escape

#: Viridis at 5 stops (matplotlib's), for sequential maps; blue-white-red for differences.
SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
DIVERGING = ((33, 102, 172), (247, 247, 247), (178, 24, 43))
CELL = 22
PAD = 36


def _mix(stops, t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    a, b = stops[i], stops[i + 1]
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b, strict=True))


def sequential(value: float, low: float, high: float) -> str:
    return _mix(SEQUENTIAL, 0.5 if high <= low else (value - low) / (high - low))


def diverging(value: float, bound: float) -> str:
    return _mix(DIVERGING, 0.5 if bound <= 0 else 0.5 + value / (2 * bound))


def _num(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "nan"


def head_map(title: str, colors: list[list[str]], tips: list[list[str]], css_class: str = "map") -> str:
    """A layers (rows) × heads (columns) grid of colored cells, each with a tooltip."""
    layers, heads = len(colors), len(colors[0]) if colors else 0
    width, height = PAD + heads * CELL + 4, PAD + layers * CELL + 4
    out = [
        f'<svg class="{css_class}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">'
    ]
    for head in range(heads):
        x = PAD + head * CELL + CELL / 2
        out.append(f'<text x="{x}" y="{PAD - 6}" text-anchor="middle">{head}</text>')
    for layer in range(layers):
        y = PAD + layer * CELL
        out.append(f'<text x="{PAD - 6}" y="{y + CELL * 0.7}" text-anchor="end">{layer}</text>')
        for head in range(heads):
            out.append(
                f'<rect x="{PAD + head * CELL}" y="{y}" width="{CELL - 1}" height="{CELL - 1}" '
                f'fill="{colors[layer][head]}"><title>{escape(tips[layer][head])}</title></rect>'
            )
    out.append(f'<text x="2" y="12">{escape(title)}</text></svg>')
    return "".join(out)


def value_map(title: str, grid: list[list[float]], tip, signed: bool = False) -> str:
    """`head_map` of numbers: viridis from the grid's minimum to maximum, or blue-white-red around 0."""
    flat = [v for row in grid for v in row if math.isfinite(v)] or [0.0]
    low, high = min(flat), max(flat)
    bound = max(abs(low), abs(high))
    colors = [[diverging(v, bound) if signed else sequential(v, low, high) for v in row] for row in grid]
    tips = [[tip(layer, head, v) for head, v in enumerate(row)] for layer, row in enumerate(grid)]
    legend = f"{_num(-bound)} … {_num(bound)}" if signed else f"{_num(low)} … {_num(high)}"
    return head_map(f"{title} ({legend})", colors, tips)


def line_chart(title: str, values: list[float], width: int = 260, height: int = 140) -> str:
    """values[layer] as a polyline with a dot per layer."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    left, right, top, bottom = 50, 8, 20, 30
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (i / (n - 1) if n > 1 else 0.5) * (width - left - right)
        y = top + (1 - (v - low) / span) * (height - top - bottom)
        return round(x, 2), round(y, 2)

    points = [xy(i, v) for i, v in enumerate(values)]
    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="2" y="12">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{high:.3g}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{low:.3g}</text>',
        f'<text x="{(left + width) / 2}" y="{height - 2}" text-anchor="middle">layer</text>',
        *[
            f'<text x="{x}" y="{height - bottom + 12}" text-anchor="middle">{i}</text>'
            for i, (x, _) in enumerate(points)
        ],
        '<polyline class="line" points="' + " ".join(f"{x},{y}" for x, y in points) + '"/>',
    ]
    for i, ((x, y), v) in enumerate(zip(points, values, strict=True)):
        out.append(f'<circle cx="{x}" cy="{y}" r="3"><title>layer {i}: {_num(v)}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    title: str, counts: dict[str, int], width: int = 420, colors: dict[str, str] | None = None
) -> str:
    """One horizontal bar per label (in `colors[label]` when given: the bars then key a map's colors)."""
    row, left = 20, 120
    height = 24 + row * len(counts)
    top = max(counts.values(), default=0) or 1
    out = [
        f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="2" y="12">{escape(title)}</text>',
    ]
    for i, (label, count) in enumerate(counts.items()):
        y = 20 + i * row
        w = max(1.0, (width - left - 40) * count / top)  # a zero count keeps a visible sliver
        fill = f' style="fill: {colors[label]}"' if colors else ""
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" class="bar"{fill}>'
            f"<title>{escape(label)}: {count}</title></rect>"
        )
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{count}</text>')
    out.append("</svg>")
    return "".join(out)
