"""The viewer's reading follow-ups of issues 15 and 16 in a real browser (Debian's Chromium via
Playwright, a real gRPC server + HTTP gateway): the text's sentences as the model view's span maps
and as the text view's passages (KindInfo.sentences), each head's retrieval score as a column of
the statistics tables, the query focus of selected tokens over the context sentences, and the
model's own head numbers in a bertviz model_view(include_heads=...) embed. Shown values are
compared with the Python trace of the same model and text; the hand-set needle model of
examples/needle.py must show its planted head first.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse

import pytest
import test_viewer
import test_viewer_needle
import torch
from test_viewer import open_view, settle

import attnscope
from attnscope import Extractor
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

from tiny_models import build, word_tokenizer

playwright_api = pytest.importorskip("playwright.sync_api")
browser, page = test_viewer.browser, test_viewer.page  # fixtures: Chromium once per module, a page per test
needle = test_viewer_needle.needle  # fixture: examples/needle.py as a module
MODEL_READY = "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined"
TEXT_READY = "window.attnscopeTimings && window.attnscopeTimings.textReadyMs !== undefined"
# Four sentences of uneven length (MiniLM: 5 to 12 tokens each).
STORY = (
    "The doctor asked the nurse a question. She said she would help. The patient in the next room "
    "had waited since the early morning for his results. Nobody knew."
)


@pytest.fixture(scope="module")
def models(needle):
    tok = needle.word_tokenizer()
    return {
        "minilm": Extractor.from_pretrained(),
        "planted": Extractor(needle.planted_model(tok, positions=512), tok),
    }


@pytest.fixture(scope="module")
def stack(models):
    server = BackgroundServer(AttentionCore(models))
    gateway = Gateway(server.address, port=0)
    gateway.start()
    yield gateway.url
    gateway.stop()
    server.stop()


def exported(page) -> dict:
    """The shown view's JSON export (the Export JSON button's download)."""
    with page.expect_download() as download:
        page.locator("#export-json").click()
    return json.loads(download.value.path().read_text())["data"]


def hover_cell(page, layer: int, slot: int, i: int, j: int, n: int):
    """The pointer over cell (i, j) of the n × n thumbnail in `layer`, column `slot` of the grid."""
    lay = json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))
    box = page.locator("#pane-a canvas.grid").bounding_box()
    x = box["x"] + lay["left"] + slot * (lay["cell"] + lay["gap"]) + (j + 0.5) * lay["cell"] / n
    page.mouse.move(x, box["y"] + lay["top"] + layer * lay["rowH"] + (i + 0.5) * lay["cell"] / n)


def test_span_maps_default_to_the_sentences_and_equal_the_python_span_map(stack, page, models):
    tr = models["minilm"].trace(STORY)
    sentences = tr.sentence_spans()
    assert len(sentences) == 4 and len({b - a for a, b in sentences}) > 1, sentences
    text = urllib.parse.quote(STORY)
    open_view(page, stack, f"model=minilm&text={text}&view=model&maps=spans", MODEL_READY)
    settle(page)
    view = page.locator("#pane-a .view-body[data-view=model]")
    assert view.locator("select.spans").input_value() == "sentences", "several sentences: the default"
    data = exported(page)
    assert data["spanUnit"] == "sentences"
    assert data["spans"] == [list(s) for s in sentences] == data["keySpans"]
    maps = tr.span_pooled(sentences)
    assert torch.tensor(data["spanMaps"]).view(6, 12, 4, 4).allclose(maps, rtol=1e-4, atol=1e-6)
    key = view.locator(".span-key li").all_inner_texts()
    assert [k.split(" · ")[0] for k in key] == [
        f"sentence {i + 1}: tokens {a}–{b - 1}" for i, (a, b) in enumerate(sentences)
    ]
    # The hover names each cell's sentences (numbered from 1) and their token ranges.
    for layer, head, i, j in ((0, 2, 2, 1), (5, 11, 3, 3)):
        hover_cell(page, layer, head, i, j, 4)
        (a, b), (c, d) = sentences[i], sentences[j]
        prefix = f"sentence {i + 1} (tokens {a}–{b - 1}) → sentence {j + 1} (keys {c}–{d - 1}): "
        page.wait_for_function(
            "(p) => document.querySelector('#pane-a .grid-tip').textContent.includes(p)", arg=prefix
        )
        value = float(page.locator("#pane-a .grid-tip").inner_text().split(prefix, 1)[1].split(" ")[0])
        assert value == pytest.approx(float(maps[layer, head, i, j]), rel=5e-3, abs=1e-4)
    # Equal spans still, by the control; the URL keeps the choice either way.
    view.locator("select.spans").select_option("4")
    page.wait_for_function("new URLSearchParams(location.search).get('spans') === '4'")
    settle(page)
    assert view.locator(".span-key").is_hidden()
    view.locator("select.spans").select_option("sentences")
    page.wait_for_function("new URLSearchParams(location.search).get('spans') === 'sentences'")
    settle(page)
    assert view.locator(".span-key li").count() == 4


def test_sentence_passages_rank_the_sentences_by_their_mass_as_python_does(stack, page, models):
    tr = models["minilm"].trace(STORY)
    sentences = tr.sentence_spans()
    text = urllib.parse.quote(STORY)
    open_view(page, stack, f"model=minilm&text={text}&view=text&passage=sentences&layers=2-4", TEXT_READY)
    settle(page)
    view = page.locator("#pane-a .view-body[data-view=text]")
    assert view.locator("select.passage").input_value() == "sentences"
    received = tr.received(layers=[2, 3, 4]).double().mean((0, 1))
    masses = [float(received[a:b].sum()) for a, b in sentences]
    order = sorted(range(4), key=lambda s: (-masses[s], sentences[s][0]))
    buttons = page.locator("#pane-a .passages button.passage")
    shown = buttons.evaluate_all("els => els.map((e) => [Number(e.dataset.start), Number(e.dataset.stop)])")
    assert shown == [list(sentences[s]) for s in order]
    labels = buttons.all_inner_texts()
    for label, s in zip(labels, order, strict=True):
        assert f"sentence {s + 1} · tokens {sentences[s][0]}–{sentences[s][1] - 1}" in label
        assert float(label.split(" · ")[0].split(". ", 1)[1]) == pytest.approx(masses[s], rel=5e-3, abs=1e-4)
    # Span mass over sentences: with a token of sentence 3 selected, its row to each sentence.
    chosen = sentences[2][0] + 1
    page.locator(f"#pane-a .tok[data-i='{chosen}']").click()
    view.locator("select.shade").select_option("spans")
    page.wait_for_function(
        f"location.search.includes('shade=spans') && new URLSearchParams(location.search).get('sel') === '{chosen}'"
    )
    settle(page)
    spans = tr.span_pooled([sentences[2]], layers=[2, 3, 4], key_spans=sentences).double().mean((0, 1, 2))
    values = page.locator("#pane-a .text-lines .tok").evaluate_all(
        "els => Object.fromEntries(els.map((e) => [e.dataset.i, Number(e.dataset.v)]))"
    )
    for s, (a, b) in enumerate(sentences):
        assert values[str(a)] == values[str(b - 1)] == pytest.approx(float(spans[s]), rel=1e-4, abs=1e-6)


def test_the_needle_answer_reads_the_fact_sentence_its_focus_and_retrieval_heads_match_python(
    stack, page, models, needle
):
    planted = models["planted"]
    prompt, _ = needle.haystack(planted.tokenizer, 300, depth=0.4, seed=3)
    tr = planted.trace(prompt, generate=3)
    n, p = tr.seq_len, tr.prompt_len
    fact_at = tr.tokens.index(needle.NEEDLE)
    query = urllib.parse.urlencode(
        {"model": "planted", "text": prompt, "view": "text", "generate": 3, "passage": "sentences"}
    )
    open_view(page, stack, query, TEXT_READY)
    page.wait_for_function(
        f"document.getElementById('status').textContent.startsWith('{n} tokens ({p} prompt + 3 generated')",
        timeout=120_000,
    )
    settle(page)
    page.locator("#pane-a button.read").click()
    page.wait_for_function(f"new URLSearchParams(location.search).get('sel') === '{p}-{n - 1}'")
    page.wait_for_function("document.querySelector('#pane-a .focus-heads li')")
    settle(page)
    # The top passages are the prompt's sentences, ranked as the Python API ranks what the answer read.
    expected = tr.passages(top=10)
    buttons = page.locator("#pane-a .passages button.passage")
    shown = buttons.evaluate_all("els => els.map((e) => [Number(e.dataset.start), Number(e.dataset.stop)])")
    assert shown == [[a, b] for a, b, _ in expected]
    assert shown[0][0] <= fact_at < shown[0][1], "the fact's sentence ranks first"
    assert tr.tokens[shown[0][0] : shown[0][1]] == ["The", "secret", "code", "is", "7421", "."]

    # Query focus: the answer (the question) over the prompt's sentences, every layer and head.
    contexts = [(a, min(b, p)) for a, b in tr.sentence_spans() if a < p]
    focus = tr.query_focus((p, n), contexts)
    data = exported(page)["queryFocus"]
    assert data["question"] == [p, n] and data["contexts"] == [list(c) for c in contexts]
    got = torch.tensor(data["values"]).view(data["layers"], data["heads"], len(contexts))
    assert got.allclose(focus, rtol=1e-4, atol=1e-6)
    assert contexts[data["top"]][0] <= fact_at < contexts[data["top"]][1], "read most: the fact's sentence"
    first = page.locator("#pane-a .focus-heads li").first
    assert (first.get_attribute("data-layer"), first.get_attribute("data-head")) == ("0", "0")
    assert float(first.locator("b").inner_text()) == pytest.approx(float(focus[0, 0, data["top"]]), abs=1e-3)
    # A click on a head of the focus map shades the text by that layer and head.
    geometry = json.loads(page.locator("#pane-a canvas.focus-map").get_attribute("data-geometry"))
    page.locator("#pane-a canvas.focus-map").click(
        position={
            "x": geometry["left"] + 1.5 * geometry["cell"],
            "y": geometry["top"] + 1.5 * geometry["cell"],
        }
    )
    page.wait_for_function("location.search.includes('layers=1-1') && location.search.includes('head=1')")

    # The retrieval column, in the model view's table: sorted, the planted head first.
    scores = tr.retrieval_scores()
    assert float(scores[0, 0]) == 1.0
    page.click("#tabs button[data-view='model']")
    page.wait_for_function(MODEL_READY)
    settle(page)
    header = page.locator("#pane-a .stats-panel th", has_text="retrieval")
    assert "Wu et al. 2024" in header.get_attribute("title")
    header.click()
    page.wait_for_function("location.search.includes('sort=retrieval')")
    settle(page)
    rows = page.locator("#pane-a .stats-panel tr.head-row").evaluate_all(
        "els => els.map((e) => [Number(e.dataset.layer), Number(e.dataset.head), e.lastElementChild.textContent])"
    )
    assert (rows[0][0], rows[0][1]) == (0, 0), "the planted head sorts first"
    assert len(rows) == 8
    for layer, head, value in rows:
        assert float(value) == pytest.approx(float(scores[layer, head]), abs=1e-3), (layer, head)
    assert [float(v) for _, _, v in rows] == sorted((float(v) for _, _, v in rows), reverse=True)
    lay = json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))
    assert lay["order"][0][0] == 0, "the grid sorts each layer's heads by retrieval too"

    # The head panel: the heads shown with their retrieval scores beside the other statistics.
    page.click("#tabs button[data-view='head']")
    page.wait_for_function("window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined")
    page.wait_for_function(
        "document.querySelector('#pane-a .head-stats th:last-child').textContent === 'retrieval'"
    )
    settle(page)
    panel = page.locator("#pane-a .head-stats tr.head-row").evaluate_all(
        "els => els.map((e) => [Number(e.dataset.layer), Number(e.dataset.head), e.lastElementChild.textContent])"
    )
    assert [(layer, head) for layer, head, _ in panel] == [(0, 1)], (
        "layer 0 (the text view's range is its own), head 1"
    )
    assert float(panel[0][2]) == pytest.approx(float(scores[0, 1]), abs=1e-3)


def embed_document(markup) -> str:
    """The standalone page a notebook embed carries (its iframe's srcdoc)."""
    text = markup.data if hasattr(markup, "data") else markup
    return html.unescape(re.search(r'srcdoc="(.*?)"', text, re.S).group(1))


def test_an_include_heads_embed_labels_heads_with_the_models_numbers(page, tmp_path):
    model, tok = build("bert", dtype=torch.float32), word_tokenizer()
    enc = tok("w1 w2 w3 w1 w5 w2", return_tensors="pt")
    with torch.no_grad():
        attention = model(**enc, output_attentions=True).attentions
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    markup = attnscope.model_view(
        attention, tokens, include_layers=[1, 0], include_heads=[3, 1], html_action="return"
    )
    path = tmp_path / "embed.html"
    path.write_text(embed_document(markup))
    page.goto(path.as_uri())
    page.wait_for_function(MODEL_READY, timeout=60_000)
    settle(page)
    rows = page.locator("#pane-a .stats-panel tr.head-row").evaluate_all(
        "els => els.map((e) => [...e.children].slice(0, 2).map((c) => c.textContent))"
    )
    assert rows == [["1", "3"], ["1", "1"], ["0", "3"], ["0", "1"]]
    hover_cell(page, 1, 0, 0, 0, 1)
    page.wait_for_function(
        "document.querySelector('#pane-a .grid-tip').textContent.startsWith('layer 0, head 3')"
    )
    page.locator("#pane-a .stats-panel tr.head-row").first.click()  # layer 1 (index 0), head 3 (index 0)
    page.wait_for_function("document.querySelector('#pane-a .heat-title').textContent === 'layer 1, head 3'")
    page.locator("body").press("h")
    page.wait_for_function(
        "!location.search.includes('view=') && document.querySelector('#pane-a .head-square')"
    )
    settle(page)
    squares = page.locator("#pane-a .head-square").evaluate_all("els => els.map((e) => e.title)")
    assert squares == ["head 3", "head 1"]
    assert page.locator("#pane-a .head-stats tr.head-row td").first.inner_text() == "3", "the head picked"
