"""The viewer as a notebook embeds it (a standalone HTML file, opened from file:// in Chromium via
Playwright, no server): only the view and the controls that work there, nothing disabled; the
model's own layer numbers when the file holds a subset of layers (bertviz's include_layers)."""

from __future__ import annotations

import pytest
import test_viewer
import torch

from attnscope import Extractor
from attnscope.service.exports import trace_standalone

from tiny_models import build, word_tokenizer

pytest.importorskip("playwright.sync_api")
browser, page = test_viewer.browser, test_viewer.page  # fixtures: Chromium once per module, a page per test
settle = test_viewer.settle
TEXT = "w1 w2 w3 w1 w5"


@pytest.fixture(scope="module")
def trace():
    return Extractor(build("llama", dtype=torch.float32), word_tokenizer()).trace(TEXT)


def open_file(page, tmp_path, html: str, query: str = ""):
    path = tmp_path / "embed.html"
    path.write_text(html)
    page.goto(path.as_uri() + query)
    page.wait_for_function("window.attnscopeTimings && window.attnscopeTimings.renders >= 1", timeout=60_000)
    settle(page)


def shown_controls(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter((e) => e.offsetParent !== null).map((e) => (e.disabled ? 'DISABLED ' : '') + (e.id || e.className || e.textContent.trim()))""")


def test_an_embed_shows_no_disabled_or_useless_controls(trace, page, tmp_path):
    open_file(page, tmp_path, trace_standalone(trace, "tiny", text=TEXT, neuron_queries=[]))
    controls = shown_controls(page)
    assert not [c for c in controls if c.startswith("DISABLED")], controls
    for gone in ("#run", "#text", "#pair", "#compare", "#model"):
        assert page.locator(gone).is_hidden(), gone
    assert page.locator("#embedded-text").inner_text() == TEXT
    assert page.locator("#tabs button[data-view=neuron]").is_hidden(), "this file holds no neuron views"
    page.locator("body").press("n")  # the keyboard cannot reach the missing view either
    page.locator("body").press("m")
    page.wait_for_function("location.search.includes('view=model')")
    settle(page)
    assert page.locator("#pane-a canvas.grid").is_visible()
    assert page.locator("#error").is_hidden()
    assert "view=neuron" not in page.url


def test_an_embed_labels_layers_with_the_models_numbers(trace, page, tmp_path):
    html = trace_standalone(trace, "tiny", text=TEXT, neuron_queries=[0, 1], layer_numbers=[3, 7])
    open_file(page, tmp_path, html)
    assert page.locator("#pane-a select.layer option").all_inner_texts() == ["3", "7"]
    page.locator("#pane-a select.layer").select_option("1")
    page.wait_for_function("location.search.includes('layer=1')")
    settle(page)
    assert page.locator("#pane-a .head-stats caption").inner_text() == "head statistics, layer 7"
    page.click("#tabs button[data-view=model]")
    page.wait_for_function("window.attnscopeTimings.modelDrawMs !== undefined")
    settle(page)
    layers = page.locator("#pane-a .stats-panel tr.head-row td:first-child").all_inner_texts()
    assert layers == ["3"] * 4 + ["7"] * 4
    # The neuron view: the tokens the file holds neuron views for can be picked; the others say so.
    page.click("#tabs button[data-view=neuron]")
    page.wait_for_function("document.querySelectorAll('#pane-a .query-tokens .token').length === 7")
    dimmed = page.locator("#pane-a .query-tokens .token.filtered")
    assert dimmed.count() == 5 and "not in this file's neuron views" in dimmed.first.get_attribute("title")
    dimmed.nth(2).hover()  # no preview of a token the file lacks (no error, the picture stays)
    dimmed.nth(2).click()
    settle(page)
    assert page.locator("#error").is_hidden() and page.locator("#pane-a canvas.neuron").is_visible()
    assert "query=" not in page.url
    # Repeated tokens are told apart by position ("w1 #1", "w1 #4").
    assert page.locator("#pane-a .query-tokens .token").nth(4).get_attribute("title").startswith("w1 #4")


def test_layer_numbers_must_match_the_layers(trace):
    with pytest.raises(ValueError, match="names 3 layers, the trace holds 2"):
        trace_standalone(trace, "tiny", layer_numbers=[0, 1, 2])
