"""Needle in a haystack, made visible (issue 16): in a real browser, a model that must read the
planted fact (examples/needle.py's hand-set head) generates its answer; Read selects the answer's
tokens and the text view ranks the passage holding the fact first, and its jump lands there."""

from __future__ import annotations

import urllib.parse

import pytest
import test_needle
import test_viewer
from test_viewer import open_view, settle

from attnscope import Extractor
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

playwright_api = pytest.importorskip("playwright.sync_api")
browser, page = test_viewer.browser, test_viewer.page  # fixtures: Chromium once per module, a page per test
needle = test_needle.needle  # the example module, loaded once (tests/test_needle.py)


@pytest.fixture(scope="module")
def planted(needle):
    tok = needle.word_tokenizer()
    return Extractor(needle.planted_model(tok, positions=1024), tok)


@pytest.fixture(scope="module")
def stack(planted):
    server = BackgroundServer(AttentionCore({"planted": planted}))
    gateway = Gateway(server.address, port=0)
    gateway.start()
    yield gateway.url
    gateway.stop()
    server.stop()


def test_the_answer_lights_the_planted_passage_and_the_jump_lands_on_it(stack, page, needle, planted):
    prompt, _ = needle.haystack(planted.tokenizer, 600, depth=0.7, seed=5)
    tr = planted.trace(prompt, generate=3)
    n, p = tr.seq_len, tr.prompt_len
    fact_at = tr.tokens.index(needle.NEEDLE)
    query = urllib.parse.urlencode(
        {"model": "planted", "text": prompt, "view": "text", "generate": 3, "passage": 16}
    )
    open_view(
        page, stack, query, "window.attnscopeTimings && window.attnscopeTimings.textReadyMs !== undefined"
    )
    page.wait_for_function(
        f"document.getElementById('status').textContent.startsWith('{n} tokens ({p} prompt + 3 generated')",
        timeout=120_000,
    )
    settle(page)
    view = page.locator("#pane-a .view-body[data-view=text]")
    view.locator("select.head").select_option("-1")  # every head of every layer, averaged
    settle(page)
    view.locator("button.read").click()
    page.wait_for_function(f"new URLSearchParams(location.search).get('sel') === '{p}-{n - 1}'")
    settle(page)
    buttons = page.locator("#pane-a .passages button.passage")
    buttons.first.wait_for()
    start, stop = (int(buttons.first.get_attribute(f"data-{edge}")) for edge in ("start", "stop"))
    assert start <= fact_at < stop, f"the top passage [{start}, {stop}) misses the fact at {fact_at}"
    # The page's ranking is the Python API's: the answer's attention over every layer and head.
    read = tr.attention_from(list(range(p, n))).double()
    windows = [(a, min(p, a + 16)) for a in range(0, p, 16)]
    best = max(windows, key=lambda w: float(read[w[0] : w[1]].sum()))
    assert (start, stop) == best
    page.locator("#pane-a .text-scroller").evaluate("el => { el.scrollTop = 0; }")
    buttons.first.click()
    page.wait_for_function(f"document.querySelectorAll('#pane-a .tok.hl').length === {stop - start}")
    outlined = page.locator("#pane-a .tok.hl").evaluate_all("els => els.map((e) => Number(e.dataset.i))")
    assert outlined == list(range(start, stop))
    needle_token = page.locator(f"#pane-a .tok[data-i='{fact_at}']")
    assert needle_token.inner_text().strip() == needle.NEEDLE
    box, shown = needle_token.bounding_box(), page.locator("#pane-a .text-scroller").bounding_box()
    assert box is not None and shown["y"] <= box["y"] <= shown["y"] + shown["height"], (
        "the jump shows the fact"
    )
