"""report.html and compare.html in Debian's Chromium, offline with every network request refused:
their maps, charts and bars are drawn (SVG elements with geometry, painted pixels), no request
leaves the page, no script error."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from test_exports import browser, offline_page  # noqa: F401 (browser is a fixture)
from test_report import report_args, save_tiny, write_corpus

from attnscope.cli import main as cli_main
from attnscope.kernels.facts import HEAD_STAT_NAMES

#: Each SVG of a kind: how many, the elements that carry its picture, and how many of those each has.
GEOMETRY = """(selector) => [...document.querySelectorAll(selector)].map(svg => {
    const marks = [...svg.querySelectorAll('rect, polyline, circle')];
    return {
        label: svg.getAttribute('aria-label'),
        marks: marks.map(m => { const b = m.getBBox(); return [m.tagName, b.width, b.height]; }),
        fills: [...new Set([...svg.querySelectorAll('rect')].map(r => getComputedStyle(r).fill))].length,
        points: [...svg.querySelectorAll('polyline')].map(p => p.points.numberOfItems),
    };
})"""


def painted(page, selector: str) -> int:
    """Distinct colors in a screenshot of the first element matching `selector`."""
    shot = Image.open(io.BytesIO(page.locator(selector).first.screenshot())).convert("RGB")
    return len(shot.getcolors(maxcolors=1 << 24))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("html")
    corpus = write_corpus(folder / "corpus", torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()))))
    for name, seed in (("a", 0), ("b", 1)):
        model = save_tiny(folder / f"model-{name}", seed=seed)
        assert cli_main(report_args(model, corpus, folder / name)) == 0
    assert (
        cli_main(["report", "--compare", str(folder / "a"), str(folder / "b"), "--out", str(folder / "cmp")])
        == 0
    )
    return folder


def test_report_html_draws_its_plots_offline(reports, browser):  # noqa: F811
    context, page = offline_page(browser)
    try:
        page.goto((reports / "a" / "report.html").as_uri())
        maps = page.evaluate(GEOMETRY, "svg.map")
        labels = [m["label"].split(" (")[0] for m in maps]
        assert labels == [*HEAD_STAT_NAMES, "most frequent class per head", "class consistency"]
        for m in maps:
            assert len(m["marks"]) == 2 * 4 and all(w > 0 and h > 0 for _, w, h in m["marks"]), m
        entropy = maps[0]
        assert entropy["fills"] > 1  # colored by value, not one flat color
        charts = page.evaluate(GEOMETRY, "svg.chart")
        assert [c["label"] for c in charts] == list(HEAD_STAT_NAMES)
        for c in charts:
            assert c["points"] == [2]  # one point per layer
            assert [t for t, _, _ in c["marks"]].count("circle") == 2
        (bars,) = page.evaluate(GEOMETRY, "svg.bars")
        assert len(bars["marks"]) == 8 and all(w > 0 and h > 0 for _, w, h in bars["marks"])
        assert painted(page, "svg.map") > 4 and painted(page, "svg.chart") > 4
        assert page.locator("table tr").count() > 2 * 4  # the head table, one row per head
        assert "too long" in page.locator("body").inner_text()  # the bad documents are listed
        assert page.network_attempts == [] and page.js_errors == []
    finally:
        context.close()


def test_compare_html_draws_its_difference_maps_offline(reports, browser):  # noqa: F811
    context, page = offline_page(browser)
    try:
        page.goto((reports / "cmp" / "compare.html").as_uri())
        maps = page.evaluate(GEOMETRY, "svg.map")
        assert [m["label"].split(" (")[0] for m in maps] == [f"Δ {n}" for n in HEAD_STAT_NAMES]
        for m in maps:
            assert len(m["marks"]) == 2 * 4 and all(w > 0 and h > 0 for _, w, h in m["marks"]), m
        assert maps[0]["fills"] > 1 and painted(page, "svg.map") > 4
        assert page.network_attempts == [] and page.js_errors == []
    finally:
        context.close()
