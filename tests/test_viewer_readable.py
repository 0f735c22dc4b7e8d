"""Issue 14 in a real browser (Debian's Chromium via Playwright, a real gRPC server + HTTP
gateway): every number readable and exact, axes and legends on every matrix, errors that clear
the picture, a page that never scrolls sideways, heads in the URL, search and keyboard, exports
that stand alone. Assertions are on what a person sees: text shown, pixels, page width; values
are compared with the exact ones of the Python trace of the same model and text."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import test_viewer
import torch
from test_viewer import HEAD_READY, head_geometry, open_view, pixel, settle

from attnscope import Extractor

from tiny_models import build, random_text, word_tokenizer

playwright_api = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image", reason="the PNG checks read the file with Pillow")
browser, page = test_viewer.browser, test_viewer.page  # fixtures: Chromium once per module, a page per test
TEXT = test_viewer.TEXT  # [CLS] the doctor asked the nurse a question . she said she would help . [SEP]
SHE, NURSE = 9, 5
MODEL_READY = "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined"


@pytest.fixture(scope="module")
def models():
    return {
        "minilm": Extractor.from_pretrained(),
        "tiny": Extractor(build("llama", dtype=torch.float32), word_tokenizer()),
    }


@pytest.fixture(scope="module")
def stack(models):
    yield from test_viewer.serve(models)


@pytest.fixture(scope="module")
def exact(models):
    return models["minilm"].trace(TEXT)


def numbers_of(text: str) -> dict[int, float]:
    """{head: value} of a head view tooltip's lines "head 8: 0.00210"."""
    return {int(h): float(v) for h, v in re.findall(r"head (\d+): ([-0-9.e]+)", text)}


def test_small_weights_show_their_significant_digits(stack, page, exact):
    """Layer 2, query "she", key "nurse": weights below 0.01 read with 3 significant digits (not 0),
    each equal to the Python trace's exact value; the JSON export holds all 3,072 weights."""
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=2&query={SHE}", HEAD_READY)
    geo = head_geometry(page)
    box = page.locator("#pane-a canvas.lines").bounding_box()
    page.mouse.move(box["x"] + geo["key"] + 10, box["y"] + 18 * NURSE + 9)
    settle(page)
    tip = page.locator("#pane-a .tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert text.startswith(f"she #{SHE} ({SHE}) → nurse ({NURSE}), layer 2"), text
    shown = numbers_of(text)
    truth = {h: float(exact.attention(2, h)[SHE, NURSE]) for h in range(12)}
    small = [h for h, v in truth.items() if v < 0.01]
    assert small, truth
    for h, v in truth.items():
        assert shown[h] != 0 and abs(shown[h] - v) <= 0.005 * v, (h, shown[h], v)
    for h in small:  # three significant digits, as written: 0.00133 or 7.70e-4
        written = re.search(rf"head {h}: (\S+)", text).group(1)
        assert re.fullmatch(r"0\.00\d{3}|\d\.\d\de-\d", written), written
    with page.expect_download() as download:
        page.locator("#export-json").click()
    data = json.loads(download.value.path().read_text())["data"]
    weights = np.array(data["attention"])
    assert weights.shape == (12, 16, 16) and weights.size == 3072
    assert np.allclose(weights[:, SHE, NURSE], [truth[h] for h in range(12)], rtol=1e-5, atol=0)


def visible(page, selector: str) -> bool:
    return page.locator(selector).first.is_visible()


def run_again(page):
    """Run TEXT from the form and wait until its picture is shown without an error."""
    page.fill("#text", TEXT)
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('error').hidden && document.getElementById('status').textContent"
    )
    settle(page)


def test_errors_clear_the_picture(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    assert visible(page, "#pane-a canvas.lines")
    # An empty text: an error, no picture, no status.
    page.fill("#text", "")
    page.click("#run")
    page.wait_for_function("!document.getElementById('error').hidden")
    assert "type a text" in page.locator("#error").inner_text()
    assert not visible(page, "#pane-a canvas.lines") and page.locator("#status").inner_text() == ""
    # Too long for the model (1,668 tokens on 512 positions): the service's error, no old picture.
    run_again(page)
    assert visible(page, "#pane-a canvas.lines")
    page.fill("#text", " ".join(["word"] * 1666))
    page.click("#run")
    page.wait_for_function("!document.getElementById('error').hidden", timeout=60_000)
    assert "512" in page.locator("#error").inner_text()
    assert not visible(page, "#pane-a canvas.lines") and page.locator("#status").inner_text() == ""
    # The server gone: a tab that must load shows the error, not the previous view's picture.
    run_again(page)
    page.route(f"**{test_viewer.SERVICE_PATH}**", lambda route: route.abort())
    page.click("#tabs button[data-view='model']")
    page.wait_for_function("!document.getElementById('error').hidden", timeout=60_000)
    settle(page)
    assert not visible(page, "#pane-a canvas.grid") and not visible(page, "#pane-a canvas.lines")
    assert page.locator("#status").inner_text() == ""


def page_width(page) -> int:
    return page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


@pytest.mark.parametrize("width", [1000, 3840])
def test_no_sideways_scrolling_at_368_tokens(stack, browser, width):
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    try:
        text = random_text(366, torch.Generator().manual_seed(5))  # 368 tokens
        open_view(
            page,
            stack,
            f"model=tiny&text={text}&view=neuron&query=3",
            "document.querySelector('#pane-a .note') && document.querySelector('#pane-a .note').textContent.includes('query 3')",
        )
        settle(page)
        assert page.locator("#pane-a .query-tokens .token").count() == 368
        assert page_width(page) <= width, "the neuron view's token bar wraps"
        for view in ("head", "model"):
            page.click(f"#tabs button[data-view='{view}']")
            settle(page)
            assert page_width(page) <= width, view
        page.fill("#compare", random_text(100, torch.Generator().manual_seed(6)))
        page.click("#run")
        page.wait_for_function("!document.getElementById('difference').hidden", timeout=60_000)
        settle(page)
        assert page_width(page) <= width, "comparing"
    finally:
        context.close()


def test_head_selection_is_in_the_url_after_reload(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    squares = page.locator("#pane-a .head-square")
    squares.nth(0).click()
    page.wait_for_function("new URLSearchParams(location.search).get('heads') === '1,2,3,4,5,6,7,8,9,10,11'")
    squares.nth(5).click()
    page.wait_for_function("new URLSearchParams(location.search).get('heads') === '1,2,3,4,6,7,8,9,10,11'")
    page.reload()
    page.wait_for_function(HEAD_READY)
    settle(page)
    off = page.locator("#pane-a .head-square.off").evaluate_all("els => els.map((e) => e.dataset.head)")
    assert off == ["0", "5"]


def test_minimap_only_when_the_rows_do_not_fit(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    assert page.locator("#pane-a canvas.minimap").is_hidden()
    height = page.locator("#pane-a .scroller").bounding_box()["height"]
    assert height <= 16 * 18 + 8, "a 16-token head view is as tall as its rows"


def test_heatmap_axes_legend_hover_and_selected_cell(stack, page, exact):
    open_view(page, stack, f"model=minilm&text={TEXT}&view=model&layer=2&head=8", MODEL_READY)
    settle(page)
    assert "(exact: every position)" in page.locator("#pane-a .region").inner_text()
    lay = json.loads(page.locator("#pane-a canvas.heatmap").get_attribute("data-layout"))
    cell = lay["size"] / 16
    heat = page.locator("#pane-a canvas.heatmap")
    shot = np.array(Image.open(io.BytesIO(heat.screenshot())).convert("RGB")).astype(int)
    background = shot[2, 2]
    # Token labels left of every row and above every column (ink that is not the background).
    for i in range(16):
        y = int(lay["top"] + (i + 0.5) * cell)
        assert (
            np.abs(shot[y - 4 : y + 4, lay["left"] - 60 : lay["left"] - 4] - background).sum(axis=2) > 200
        ).any(), i
        x = int(lay["left"] + (i + 0.5) * cell)
        assert (
            np.abs(shot[lay["top"] - 40 : lay["top"] - 4, x - 4 : x + 4] - background).sum(axis=2) > 200
        ).any(), i
    # The legend under the matrix: a colour bar from white to deep blue.
    bar = shot[lay["top"] + lay["size"] + 14, lay["left"] : lay["left"] + lay["size"]]
    assert bar[:, 0].max() - bar[:, 0].min() > 150, "a colour bar from 0 to 1"
    legend_text = page.evaluate("document.querySelector('#pane-a canvas.heatmap') !== null")
    assert legend_text
    # Hover: the exact value with both tokens and positions.
    box = heat.bounding_box()
    at = {"x": lay["left"] + (NURSE + 0.5) * cell, "y": lay["top"] + (SHE + 0.5) * cell}
    page.mouse.move(box["x"] + at["x"], box["y"] + at["y"])
    settle(page)
    tip = page.locator("#pane-a .detail .tooltip").inner_text()
    value = float(exact.attention(2, 8)[SHE, NURSE])
    assert tip.startswith(f"she #{SHE} ({SHE}) → nurse ({NURSE}): "), tip
    assert abs(float(tip.rsplit(": ", 1)[1]) - value) <= 0.005 * value, (tip, value)
    # Click: the cell is outlined (red), and its query pinned.
    page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
    page.wait_for_function(f"location.search.includes('query={SHE}')")
    settle(page)
    r, g, b, _ = pixel(
        page, "#pane-a canvas.heatmap", lay["left"] + NURSE * cell - 1, lay["top"] + (SHE + 0.5) * cell
    )
    assert r > 180 and g < 90 and b < 90, (r, g, b)


def test_model_view_axes_table_and_stats_from_the_server(stack, page, exact):
    open_view(page, stack, f"model=minilm&text={TEXT}&view=model", MODEL_READY)
    settle(page)
    names = page.evaluate(
        "import('/data.js').then((d) => d.serverInfo()).then((s) => s.headStats.map((h) => h.name))"
    )
    headers = page.locator("#pane-a .stats-panel th").all_inner_texts()
    assert headers == ["layer", "head", "class", *names]
    lay = json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))
    shot = np.array(
        Image.open(io.BytesIO(page.locator("#pane-a canvas.grid").screenshot())).convert("L")
    ).astype(int)
    for layer in range(6):  # a layer number left of every row; a head number above every column
        y = int(lay["top"] + layer * lay["rowH"] + lay["cell"] / 2)
        assert shot[y - 5 : y + 5, 20 : lay["left"] - 2].min() < 120, layer
    for col in range(12):
        x = int(lay["left"] + col * (lay["cell"] + lay["gap"]) + lay["cell"] / 2)
        assert shot[lay["top"] - 22 : lay["top"] - 10, x - 6 : x + 6].min() < 120, col
    # Sort by a column of the table: the URL, the grid and the table follow; a row opens its head.
    page.locator("#pane-a .stats-panel th", has_text="previous_token").click()
    page.wait_for_function("location.search.includes('sort=previous_token')")
    settle(page)
    first = page.locator("#pane-a .stats-panel tr.head-row").first
    assert first.get_attribute("data-layer") == "0" and first.get_attribute("data-head") == "2"
    stat = float(exact.head_stats()["previous_token"][0, 2])
    cells = first.locator("td").all_inner_texts()
    assert cells[2] == "previous-token"
    assert abs(float(cells[3 + names.index("previous_token")]) - stat) < 0.01
    page.locator("#pane-a .stats-panel tr.head-row").nth(3).click()
    picked = page.locator("#pane-a .stats-panel tr.head-row.selected")
    page.wait_for_function("location.search.includes('head=')")
    settle(page)
    row = page.locator("#pane-a .stats-panel tr.head-row.selected")
    assert (
        page.locator("#pane-a .heat-title").inner_text()
        == f"layer {row.get_attribute('data-layer')}, head {row.get_attribute('data-head')}"
    )
    assert picked.count() == 1


def test_head_and_neuron_views_show_the_shown_heads_statistics(stack, page, exact):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    rows = page.locator("#pane-a .view-body[data-view=head] .head-stats tr.head-row")
    assert rows.count() == 1
    headers = page.locator("#pane-a .view-body[data-view=head] .head-stats th").all_inner_texts()
    assert headers[:2] == ["head", "class"]
    names = headers[2:]
    cells = rows.first.locator("td").all_inner_texts()
    assert cells[:2] == ["2", exact.head_classes()[(0, 2)]]
    stats = exact.head_stats()
    for name, text in zip(names, cells[2:], strict=True):
        v = float(stats[name][0, 2])
        assert abs(float(text) - v) <= 0.005 * abs(v) + 1e-6, (name, text, v)
    page.click("#tabs button[data-view='neuron']")
    page.wait_for_function(
        "document.querySelectorAll('#pane-a .view-body[data-view=neuron] .head-stats tr.head-row').length === 1"
    )


def test_compare_names_both_inputs_and_says_when_lengths_differ(stack, page):
    other = "He said yes."
    open_view(
        page,
        stack,
        f"model=minilm&text={TEXT}&view=model&compare={other}",
        "!document.getElementById('difference').hidden",
    )
    settle(page)
    status = page.locator("#status").inner_text()
    assert "16 tokens" in status and f"compared with “{other}” (6 tokens)" in status, status
    note = page.locator("#difference .diff-note").inner_text()
    assert "differ in length (16 and 6 tokens)" in note and "6 × 6 blocks" in note, note
    shot = np.array(
        Image.open(io.BytesIO(page.locator("#difference canvas").screenshot())).convert("RGB")
    ).astype(int)
    assert (np.abs(shot - shot[1, 1]).sum(axis=2) > 100).mean() > 0.15, "strong colours, not faint"


def test_search_highlights_every_occurrence_and_enter_jumps(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    page.fill("#search", "she")
    page.wait_for_function("location.search.includes('search=she')")
    settle(page)
    assert page.locator("#search-count").inner_text().startswith("2 found")
    geo = head_geometry(page)
    match = (255, 213, 74)  # --match, light theme
    for row in range(16):
        r, g, b, _ = pixel(page, "#pane-a canvas.lines", 3, 18 * row + 3)
        hit = abs(r - match[0]) < 10 and abs(g - match[1]) < 10 and abs(b - match[2]) < 10
        assert hit == (row in (9, 11)), (row, r, g, b)
        r, g, b, _ = pixel(page, "#pane-a canvas.lines", geo["key"] + geo["text"] - 8, 18 * row + 3)
        assert (abs(r - match[0]) < 10 and abs(b - match[2]) < 10) == (row in (9, 11)), row
    page.locator("#search").press("Enter")
    page.wait_for_function("location.search.includes('query=9')")
    page.locator("#search").press("Enter")
    page.wait_for_function("location.search.includes('query=11')")
    page.click("#tabs button[data-view='neuron']")
    page.wait_for_function("document.querySelectorAll('#pane-a .query-tokens .token.match').length === 2")
    assert page.locator("#pane-a .query-tokens .token.match").all_inner_texts() == ["she", "she"]


def test_keyboard_moves_the_query_the_layer_and_the_view(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    page.locator("body").press("ArrowDown")
    page.wait_for_function("location.search.includes('query=0')")
    page.locator("body").press("ArrowDown")
    page.locator("body").press("ArrowDown")
    page.wait_for_function("location.search.includes('query=2')")
    page.locator("body").press("PageDown")
    page.wait_for_function("location.search.includes('layer=1')")
    page.locator("body").press("n")
    note = "document.querySelector('#pane-a .view-body[data-view=neuron] .note')"
    page.wait_for_function(f"{note} && {note}.textContent.startsWith('query 2 “doctor”, layer 1')")
    page.locator("body").press("ArrowUp")
    page.wait_for_function(f"{note}.textContent.startsWith('query 1 “the”')")
    page.locator("body").press("m")
    page.wait_for_function("location.search.includes('view=model')")
    page.locator("body").press("h")
    page.wait_for_function("!location.search.includes('view=')")


def test_grouped_query_heads_are_marked(stack, page):
    open_view(page, stack, "model=tiny&text=w1 w2 w3 w4 w5", HEAD_READY)  # 4 query heads, 2 key heads
    groups = page.locator("#pane-a .head-group")
    assert groups.count() == 2
    assert [g.locator(".head-square").count() for g in groups.all()] == [2, 2]
    page.click("#tabs button[data-view='model']")
    page.wait_for_function(MODEL_READY)
    settle(page)
    assert page.locator("#pane-a .stats-panel th").all_inner_texts()[2] == "kv"
    kv = page.locator("#pane-a .stats-panel tr.head-row td:nth-child(3)").all_inner_texts()
    assert kv == ["0", "0", "1", "1"] * 2


def export(page, button: str):
    with page.expect_download() as download:
        page.locator(button).click()
    return download.value


def test_exports_are_opaque_titled_at_2x_and_svg_for_every_view(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}&theme=dark&layer=0&head=2", HEAD_READY)
    png = export(page, "#export-png")
    image = np.array(Image.open(png.path()).convert("RGBA")).astype(int)
    assert (image[..., 3] == 255).all(), "opaque"
    assert tuple(image[4, 4, :3]) == (22, 24, 28), "the dark theme's background"
    width = json.loads(page.locator("#pane-a canvas.lines").get_attribute("data-layout"))["width"]
    assert image.shape[1] >= 2 * width and image.shape[0] >= 2 * 16 * 18, "2× for print"
    title = image[6:50, 20:400, :3]
    assert (title.min(axis=2) > 180).any(), "a title line in light text"
    ink = (np.abs(image[..., :3] - (22, 24, 28)).sum(axis=2) > 60).mean()
    assert ink > 0.03, f"a picture, not mostly empty ({ink:.3f})"
    svg = export(page, "#export-svg").path().read_text()
    assert svg.startswith("<svg") and "<line" in svg and "minilm" in svg
    assert "layer 0 · head 2" in svg and 'fill="#16181c"' in svg
    for view in ("model", "neuron"):
        page.click(f"#tabs button[data-view='{view}']")
        settle(page)
        svg = export(page, "#export-svg").path().read_text()
        assert svg.startswith("<svg") and "<image" in svg and "minilm" in svg, view
        image = np.array(Image.open(export(page, "#export-png").path()).convert("RGBA"))
        assert (image[..., 3] == 255).all(), view


def contrast(a, b) -> float:
    def lum(c):
        c = [v / 255 for v in c]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_text_contrast_in_both_themes(stack, page, theme):
    open_view(page, stack, f"model=minilm&text={TEXT}&theme={theme}&view=model", MODEL_READY)
    colors = page.evaluate("""() => { const s = getComputedStyle(document.documentElement);
        const rgb = (v) => { const c = document.createElement('canvas').getContext('2d'); c.fillStyle = v.trim();
          const h = c.fillStyle; return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); };
        return Object.fromEntries(['--fg', '--bg', '--muted', '--panel', '--accent'].map((n) => [n, rgb(s.getPropertyValue(n))])); }""")
    assert contrast(colors["--fg"], colors["--bg"]) >= 7
    assert contrast(colors["--muted"], colors["--bg"]) >= 4.5
    assert contrast(colors["--fg"], colors["--panel"]) >= 7
    assert contrast(colors["--accent"], colors["--bg"]) >= 3


def test_sentence_filters_in_the_model_and_neuron_views(stack, page):
    pair = "model=minilm&text=The doctor asked the nurse.&pair=She said yes."  # B starts at 7 of 12
    open_view(page, stack, f"{pair}&view=model", MODEL_READY)
    settle(page)

    def thumb(row, col, rows):  # layer 0, head 2 (the previous-token head), block (row, col) of `rows`
        lay = json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))
        x = lay["left"] + 2 * (lay["cell"] + lay["gap"]) + (col + 0.5) * lay["cell"] / rows
        return pixel(page, "#pane-a canvas.grid", x, lay["top"] + (row + 0.5) * lay["cell"] / rows)

    assert thumb(9, 8, 12)[0] < 120, "all sentences: the sub-diagonal runs into B"
    page.locator("#pane-a .view-body[data-view=model] select.filter").select_option("AA")
    page.wait_for_function("location.search.includes('filter=AA')")
    settle(page)
    assert thumb(4, 3, 7)[0] < 120 and thumb(4, 6, 7)[0] > 200, (
        "A → A: the 7 × 7 block of sentence A fills the thumbnail"
    )
    page.click("#tabs button[data-view='neuron']")
    page.wait_for_function("document.querySelectorAll('#pane-a .query-tokens .token.filtered').length === 5")
    page.locator("#pane-a .view-body[data-view=neuron] select.filter").select_option("AB")
    page.wait_for_function("location.search.includes('filter=AB')")
    settle(page)
    with page.expect_download() as download:
        page.locator("#export-json").click()
    keys = [r["key"] for r in json.loads(download.value.path().read_text())["data"]["rows"]]
    assert keys and all(k >= 7 for k in keys), keys
