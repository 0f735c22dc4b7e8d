"""The viewer's analysis views in a real browser: the head classes (the statistics table's class
column, the model view's hover) and the sinks toggle (every view renormalised without the trace's
attention sinks, named in the status line, kept in the URL), against a real `attnscope serve` stack
on the bundled MiniLM, whose layer 0, head 2 is a previous-token head (see tests/test_viewer.py).
"""

from __future__ import annotations

import json
import re

import pytest
import test_viewer
from test_viewer import open_view, serve, settle

from attnscope import Extractor

browser, page = test_viewer.browser, test_viewer.page  # fixtures: Chromium once per module, a page per test

playwright_api = pytest.importorskip("playwright.sync_api")
TEXT = "The doctor asked the nurse a question. She said she would help."
MODEL_READY = "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined"


@pytest.fixture(scope="module")
def extractor():
    return Extractor.from_pretrained()


@pytest.fixture(scope="module")
def stack(extractor):
    yield from serve({"minilm": extractor})


def grid_layout(page) -> dict:
    return json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))


def grid_pixels(page) -> list[int]:
    """A fingerprint of the grid canvas's pixels: their count and two hashes of every byte, made in
    the page (the pixels themselves, millions of values, take tens of seconds to hand over)."""
    return page.evaluate(
        """() => { const c = document.querySelector('#pane-a canvas.grid');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let fnv = 0x811c9dc5, sum = 0;
             for (let i = 0; i < d.length; i++) {
               fnv = Math.imul(fnv ^ d[i], 16777619);
               sum = (sum + d[i] * ((i % 65521) + 1)) % 2147483647;
             }
             return [d.length, fnv >>> 0, sum]; }"""
    )


def hover_cell(page, layer: int, head: int, row: int, col: int) -> str:
    """The model view's hover readout over thumbnail (layer, head) at cell (row, col)."""
    lay = grid_layout(page)
    slot = lay["order"][layer].index(head)
    cell = lay["cell"] / 16  # 16 tokens -> an exact 16 × 16 thumbnail
    box = page.locator("#pane-a canvas.grid").bounding_box()
    x = box["x"] + lay["left"] + slot * (lay["cell"] + lay["gap"]) + (col + 0.5) * cell
    y = box["y"] + lay["top"] + layer * lay["rowH"] + (row + 0.5) * cell
    page.mouse.move(x, y)
    page.wait_for_function(
        "([r, c]) => { const t = document.querySelector('#pane-a .grid-tip');"
        " return !t.hidden && t.textContent.includes(`(${r}) →`) && t.textContent.includes(`(${c}):`); }",
        arg=[row, col],
    )
    return page.locator("#pane-a .grid-tip").inner_text()


def readout_value(tip: str) -> float:
    return float(re.search(r"\(\d+\): ([-0-9.e]+)", tip).group(1))


HEAD_READY = "window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined"


def head_table_classes(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#pane-a .head-stats tr.head-row')].map(
             (tr) => [`${tr.dataset.layer},${tr.dataset.head}`, tr.querySelector('.head-class').textContent]))"""
    )


@pytest.mark.parametrize("layer", [0, 3])
def test_head_panel_class_column_names_each_heads_class(stack, page, extractor, layer):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer={layer}", HEAD_READY)
    settle(page)
    tr = extractor.trace(TEXT)
    expected = tr.head_classes()
    heads = tr.shape()[1]
    shown = head_table_classes(page)
    assert shown == {f"{layer},{h}": expected[(layer, h)] for h in range(heads)}
    assert all(shown.values()), "every head has a class"
    if layer == 0:
        # MiniLM's planted pattern: layer 0, head 2 follows the previous token.
        assert shown["0,2"] == "previous-token"


def test_sinks_toggle_renormalises_every_view_and_survives_a_reload(stack, page, extractor):
    open_view(page, stack, f"model=minilm&text={TEXT}&view=model", MODEL_READY)
    settle(page)
    status = page.locator("#status")
    assert "sinks" not in status.inner_text()
    assert not page.locator("#sinks").is_checked()
    tr = extractor.trace(TEXT)
    sinks = tr.sinks(0.2)
    assert sinks, "MiniLM's [CLS] is a sink on this text"
    renorm = tr.renormalized(sinks)
    # A readout the renormalisation moves: the cell of layer 0 that changes most, off the sinks.
    heads = tr.shape()[1]
    moved = [renorm.attention(0, h)[:16, :16] - tr.attention(0, h)[:16, :16] for h in range(heads)]
    change = {
        (h, q, k): float(moved[h][q, k])
        for h in range(heads)
        for q in range(16)
        for k in range(16)
        if k not in sinks
    }
    head, row, col = max(change, key=lambda c: abs(change[c]))
    before = grid_pixels(page)
    plain = readout_value(hover_cell(page, 0, head, row, col))
    assert plain == pytest.approx(float(tr.attention(0, head)[row, col]), rel=2e-3, abs=1e-6)
    tokens = tr.tokens
    page.locator("#sinks").check()
    page.wait_for_function("location.search.includes('sinks=1')")
    page.wait_for_function("document.getElementById('status').textContent.includes('sinks removed')")
    settle(page)
    text = status.inner_text()
    for p in sinks:
        assert re.search(rf"\b{p} “", text), (p, text)
    for p in sinks:
        assert f"“{tokens[p]}”" in text
    after = grid_pixels(page)
    assert after != before, "the picture changes with the sinks left out"
    expected = float(renorm.attention(0, head)[row, col])
    shown = readout_value(hover_cell(page, 0, head, row, col))
    assert shown == pytest.approx(expected, rel=2e-3, abs=1e-6)
    assert shown != pytest.approx(plain, rel=1e-2)

    # A reload keeps the toggle (the URL) and the renormalised picture.
    page.reload()
    page.wait_for_function(MODEL_READY, timeout=60_000)
    page.wait_for_function("document.getElementById('status').textContent.includes('sinks removed')")
    settle(page)
    assert page.locator("#sinks").is_checked()
    assert grid_pixels(page) == after

    # Off: the plain views again.
    page.locator("#sinks").uncheck()
    page.wait_for_function("!location.search.includes('sinks=')")
    page.wait_for_function("!document.getElementById('status').textContent.includes('sinks')")
    settle(page)
    assert grid_pixels(page) == before
    assert readout_value(hover_cell(page, 0, head, row, col)) == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("view", ["head", "neuron"])
def test_every_view_draws_with_the_sinks_left_out(stack, page, view):
    open_view(
        page,
        stack,
        f"model=minilm&text={TEXT}&view={view}&layer=0&head=2&query=5&sinks=1",
        "document.getElementById('status').textContent.includes('sinks removed')",
    )
    settle(page)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert page.locator(f"#pane-a .view-body[data-view={view}]").is_visible()
