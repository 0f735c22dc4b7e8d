"""The web viewer in a real browser: Debian's Chromium driven by Playwright, against a real
`attnscope serve` stack (gRPC server + HTTP gateway) on the bundled MiniLM and a tiny Llama.

Known pattern: MiniLM's layer 0, head 2 is a previous-token head (its previous_token statistic is
1.000 on these sentences), so its head-view lines run from each token to the one before it.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from attnscope import Extractor
from attnscope.benchmarks.browser import launch_chromium
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

from tiny_models import build, random_text, word_tokenizer

playwright_api = pytest.importorskip("playwright.sync_api")
TEXT = "The doctor asked the nurse a question. She said she would help."
HEAD2_GREEN = (44, 160, 44)  # colors.js: head 2


def serve(extractors: dict):
    """A real gRPC server and HTTP gateway for `extractors`; yields the viewer's URL."""
    server = BackgroundServer(AttentionCore(extractors))
    gateway = Gateway(server.address, port=0)
    gateway.start()
    yield gateway.url
    gateway.stop()
    server.stop()


@pytest.fixture(scope="module")
def stack():
    yield from serve(
        {
            "minilm": Extractor.from_pretrained(),
            "tiny": Extractor(build("llama", dtype=torch.float32), word_tokenizer()),
            "bart": Extractor(build("bart", dtype=torch.float32), word_tokenizer()),
        }
    )


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def open_view(page, url: str, query: str, ready: str):
    page.goto(f"{url}/?{query}")
    try:
        page.wait_for_function(ready, timeout=60_000)
    except playwright_api.TimeoutError as exc:
        shown = page.evaluate(
            "[document.getElementById('error').textContent, document.getElementById('status').textContent]"
        )
        raise AssertionError(
            f"the view never became ready ({ready}); error: {shown[0]!r}, status: {shown[1]!r}"
        ) from exc


def settle(page):
    """Wait until the viewer shows its state: no frame due, no render or load under way."""
    page.wait_for_function("window.attnscopeIdle && window.attnscopeIdle()", timeout=60_000)


def pixel(page, selector: str, x: float, y: float) -> list[int]:
    return page.evaluate(
        """([sel, x, y]) => { const c = document.querySelector(sel); const dpr = c.width / c.clientWidth;
             return Array.from(c.getContext('2d').getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data); }""",
        [selector, x, y],
    )


def head_geometry(page) -> dict:
    """Where the head view draws: line ends (left, right), the query text's width, the key text's x."""
    lay = json.loads(page.locator("#pane-a canvas.lines").get_attribute("data-layout"))
    return {
        "left": lay["leftX"] + 4,
        "right": lay["rightX"] - 4,
        "text": lay["textWidth"],
        "key": lay["keyX"],
    }


def line_midpoint(geo, q: int, k: int) -> tuple[float, float]:
    return (geo["left"] + geo["right"]) / 2, (18 * q + 9 + 18 * k + 9) / 2


HEAD_READY = "window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined"


def test_head_view_draws_the_previous_token_head(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    geo = head_geometry(page)
    for q in (3, 8, 12):
        r, g, b, a = pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, q, q - 1))
        assert a > 200 and abs(r - HEAD2_GREEN[0]) < 40 and abs(g - HEAD2_GREEN[1]) < 40, (q, r, g, b, a)
        assert pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, q, q + 2))[3] < 40
    squares = page.locator("#pane-a .head-square")
    assert squares.count() == 12 and page.locator("#pane-a .head-square.off").count() == 11


def test_hover_shows_only_the_hovered_tokens_lines(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    geo = head_geometry(page)
    box = page.locator("#pane-a canvas.lines").bounding_box()
    page.mouse.move(box["x"] + geo["text"] - 30, box["y"] + 18 * 5 + 9)  # over query token 5 ("nurse")
    settle(page)
    assert pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, 5, 4))[3] > 200
    assert pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, 9, 8))[3] < 20, (
        "other queries' lines hidden"
    )
    page.mouse.move(box["x"] + geo["right"] + 30, box["y"] + 18 * 4 + 9)  # key token 4 ("the")
    settle(page)
    page.mouse.move(box["x"] + geo["right"] + 31, box["y"] + 18 * 4 + 9)
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.move(box["x"] + geo["text"] - 30, box["y"] + 18 * 5 + 9)
    page.locator("#pane-a canvas.lines").click(position={"x": geo["text"] - 30, "y": 18 * 5 + 9})
    settle(page)
    assert "query=5" in page.url
    page.mouse.move(box["x"] + geo["right"] + 30, box["y"] + 18 * 4 + 9)
    settle(page)
    tip = page.locator("#pane-a .tooltip")
    assert tip.is_visible() and re.search(r"head 2: (0\.9\d+|1\.0+)", tip.inner_text()), tip.inner_text()


def test_head_squares_toggle_and_isolate(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    geo = head_geometry(page)
    page.locator("#pane-a .head-square").nth(7).dblclick()
    page.wait_for_function("location.search.includes('head=7')")
    settle(page)
    assert pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, 8, 7))[:3] != list(HEAD2_GREEN)
    page.locator("#pane-a .head-square").nth(3).click()  # from "only 7" to "7 and 3"
    settle(page)
    assert "head=" not in page.url
    assert page.locator("#pane-a .head-square:not(.off)").count() == 2
    page.locator("#pane-a .head-square").nth(7).click()  # and hide 7 again
    settle(page)
    assert [page.locator("#pane-a .head-square:not(.off)").get_attribute("data-head")] == ["3"]


def test_model_view_finds_the_previous_token_head(stack, page):
    open_view(
        page,
        stack,
        f"model=minilm&text={TEXT}&view=model&sort=previous_token",
        "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined",
    )
    lay = json.loads(page.locator("#pane-a canvas.grid").get_attribute("data-layout"))
    assert lay["order"][0][0] == 2, "sorted by previous_token, head 2 leads layer 0"
    cell = lay["cell"] / 16  # 16 tokens -> 16 × 16 pooled thumbnail

    def at(row, col):
        return pixel(
            page, "#pane-a canvas.grid", lay["left"] + (col + 0.5) * cell, lay["top"] + (row + 0.5) * cell
        )

    for r in (4, 9, 13):
        on, off = at(r, r - 1), at(r, r + 2)
        assert on[0] < 120 and off[0] > 200, (
            r,
            on,
            off,
        )  # dark blue on the sub-diagonal, near white elsewhere
    # A click opens the head's detail beside the grid (bertviz's in-place detail), outlined in red.
    at_cell = {"x": lay["left"] + lay["cell"] / 2, "y": lay["top"] + lay["cell"] / 2}
    page.locator("#pane-a canvas.grid").click(position=at_cell)
    page.wait_for_function("location.search.includes('head=2')")
    settle(page)
    assert "view=model" in page.url
    assert page.locator("#pane-a .heat-title").inner_text() == "layer 0, head 2"
    r, g, b, _ = pixel(page, "#pane-a canvas.grid", lay["left"] - 1, lay["top"] + lay["cell"] / 2)
    assert r > 180 and g < 90 and b < 90, "the selected head is outlined"
    # A double-click (or the detail's button) opens it in the head view.
    page.locator("#pane-a canvas.grid").dblclick(position=at_cell)
    page.wait_for_function("!location.search.includes('view=model')")  # the head view is the default
    assert page.locator("#tabs button[aria-selected=true]").inner_text() == "Head view"
    assert "layer=0" not in page.url and "head=2" in page.url  # layer 0 is the default


def test_zoom_fetches_exact_tiles(stack, page):
    text = random_text(1400, torch.Generator().manual_seed(1))
    open_view(
        page,
        stack,
        f"model=tiny&text={text}&view=model&layer=1&head=3",
        "document.querySelector('#pane-a .region') && document.querySelector('#pane-a .region').textContent.includes('pooled')",
    )
    heat = page.locator("#pane-a canvas.heatmap")
    box = heat.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6)
    for _ in range(2):  # 1402 -> 701 -> 351 queries and keys: small enough for an exact tile
        page.mouse.wheel(0, -100)
        settle(page)
    page.wait_for_function(
        "document.querySelector('#pane-a .region').textContent.includes('exact tile')", timeout=30_000
    )
    assert page.evaluate("window.attnscopeTimings.tileFetches") >= 1
    region = page.locator("#pane-a .region").inner_text()
    q0, q1 = (int(v) for v in re.search(r"queries (\d+)–(\d+)", region).groups())
    assert q1 - q0 + 1 <= 512


def test_url_restores_the_neuron_view(stack, page):
    open_view(
        page,
        stack,
        f"model=minilm&text={TEXT}&view=neuron&layer=0&head=2&query=5",
        "document.querySelector('#pane-a .note') && document.querySelector('#pane-a .note').textContent.includes('query 5')",
    )
    assert "“nurse”, layer 0, head 2" in page.locator("#pane-a .note").inner_text()
    assert page.locator("#pane-a .token.pinned").inner_text() == "nurse"
    assert page.locator("#tabs button[aria-selected=true]").inner_text() == "Neuron view"
    page.locator("#pane-a .token").nth(9).hover()  # preview another query without pinning it
    page.wait_for_function("document.querySelector('#pane-a .note').textContent.includes('query 9')")
    assert "query=5" in page.url


def test_errors_from_the_service_are_shown(stack, page):
    page.goto(f"{stack}/?model=nope&text=hello")
    page.wait_for_function("!document.getElementById('error').hidden", timeout=60_000)
    assert "NOT_FOUND: model 'nope' is not served here" in page.locator("#error").inner_text()


def test_theme_compare_and_export(stack, page):
    open_view(
        page,
        stack,
        f"model=minilm&text={TEXT}&view=model&theme=dark&compare=The doctor asked the nurse a question. He said he would help.",
        "!document.getElementById('difference').hidden",
    )
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.locator("#pane-b").is_visible()
    # The difference map has coloured cells where the two inputs attend differently.
    page.wait_for_function(
        """() => { const c = document.querySelector('#difference canvas');
        if (!c.width) return false; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true; return false; }""",
        timeout=60_000,
    )
    with page.expect_download() as download:
        page.locator("#export-json").click()
    data = json.loads(download.value.path().read_text())
    assert data["state"]["view"] == "model" and len(data["data"]["stats"]["entropy"]) == 72


def test_sentence_filter_and_svg_export(stack, page):
    open_view(
        page,
        stack,
        "model=minilm&text=The doctor asked the nurse.&pair=She said yes.&layer=0&head=2",
        HEAD_READY,
    )
    geo = head_geometry(page)
    b_start = 7  # [CLS] the doctor asked the nurse . [SEP] | she ...
    on_b = line_midpoint(geo, b_start + 1, b_start)  # "said" -> "she": a B -> B line
    assert pixel(page, "#pane-a canvas.lines", *on_b)[3] > 100
    page.locator("#pane-a select.filter").select_option("AA")
    page.wait_for_function("location.search.includes('filter=AA')")
    settle(page)
    assert pixel(page, "#pane-a canvas.lines", *on_b)[3] < 20, "B -> B lines hidden by the A -> A filter"
    assert pixel(page, "#pane-a canvas.lines", *line_midpoint(geo, 3, 2))[3] > 200
    with page.expect_download() as download:
        page.locator("#export-svg").click()
    svg = download.value.path().read_text()
    assert svg.startswith("<svg") and svg.count("<line") > 0 and ">nurse</text>" in svg


def test_encoder_decoder_kinds(stack, page):
    open_view(page, stack, "model=bart&text=w1 w2 w3 w4 w5 w6", HEAD_READY)
    kind = page.locator("#pane-a select.kind")
    assert kind.is_visible()
    assert [o.inner_text() for o in kind.locator("option").all()] == ["encoder", "decoder", "cross"]
    kind.select_option("cross")
    page.wait_for_function("location.search.includes('kind=cross')")
    settle(page)
    filled = page.evaluate("""() => { const c = document.querySelector('#pane-a canvas.lines');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert filled > 500, "cross-attention lines and tokens are drawn"


def test_long_input_is_virtualized_with_top_k_lines_and_a_minimap(stack, page):
    text = random_text(
        598, torch.Generator().manual_seed(2)
    )  # 600 tokens: over the 256-token full-weight limit
    open_view(page, stack, f"model=tiny&text={text}&layer=1", HEAD_READY)
    assert "top 16 keys per head" in page.locator("#pane-a .note").inner_text()
    assert page.evaluate("document.querySelector('#pane-a .scroller').scrollTop") == 0
    mini = page.locator("#pane-a canvas.minimap").bounding_box()
    page.mouse.click(mini["x"] + 5, mini["y"] + mini["height"] - 5)  # jump to the end
    page.wait_for_function(  # the scroll event's frame has drawn the rows near the end
        "JSON.parse(document.querySelector('#pane-a canvas.lines').dataset.drawn).first > 400"
    )
    settle(page)
    top = page.evaluate("document.querySelector('#pane-a .scroller').scrollTop")
    assert top > 18 * 400, f"the minimap jumped to {top}px"
    drawn = page.evaluate("""() => { const c = document.querySelector('#pane-a canvas.lines');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert drawn > 1000, "rows near the end are drawn after the jump"
    with page.expect_download() as download:
        page.locator("#export-png").click()
    assert download.value.path().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SERVICE_PATH = "/attnscope.v1.AttentionService/"


def api_calls(page) -> list[str]:
    """The service methods the page calls (Connect: POST /attnscope.v1.AttentionService/<Method>)
    from now on, in order (a live list)."""
    calls = []
    page.on(
        "request",
        lambda r: calls.append(r.url.split(SERVICE_PATH, 1)[1]) if SERVICE_PATH in r.url else None,
    )
    return calls


def test_tab_and_theme_switches_ask_the_server_nothing(stack, page):
    calls = api_calls(page)
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    for view in ("model", "neuron"):  # each view loads once, when first shown
        page.locator(f"#tabs button[data-view={view}]").click()
        settle(page)
    assert calls.count("GetServerInfo") == 1 and calls.count("CreateTrace") == 1
    assert calls.count("GetViews") == 3, calls
    loaded = list(calls)
    page.evaluate("document.querySelector('#pane-a .view-body[data-view=head]').mountedOnce = true")
    renders = page.evaluate("window.attnscopeTimings.renders")
    for view in ("head", "model", "neuron", "head"):
        page.locator(f"#tabs button[data-view={view}]").click()
        settle(page)
        assert page.locator(f"#pane-a .view-body[data-view={view}]").is_visible()
    page.locator("#theme").click()
    settle(page)
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("window.attnscopeTimings.renders") == renders + 5, "every switch rendered"
    assert page.evaluate("document.querySelector('#pane-a .view-body[data-view=head]').mountedOnce")
    assert calls == loaded, f"switching tabs and themes asked the server for {calls[len(loaded) :]}"


def visible_canvases(target) -> list[dict]:
    return target.evaluate("""() => [...document.querySelectorAll('canvas')]
        .filter((c) => c.offsetParent !== null)
        .map((c) => ({ name: c.className, width: c.width, height: c.height, css: [c.clientWidth, c.clientHeight] }))""")


def test_every_canvas_follows_the_device_pixel_ratio(stack, browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, device_scale_factor=2)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        compare = "The doctor asked the nurse a question. He said he would help."
        open_view(
            page,
            stack,
            f"model=minilm&text={TEXT}&view=model&compare={compare}",
            HEAD_READY.replace("headDrawMs", "modelDrawMs"),
        )
        settle(page)
        seen = {}
        for view in ("model", "head", "neuron"):
            page.locator(f"#tabs button[data-view={view}]").click()
            settle(page)
            for c in visible_canvases(page):
                seen[c["name"]] = c
        # (no minimap: 16 tokens fit in the head view without scrolling)
        assert {"grid", "heatmap", "difference-map", "lines", "neuron"} <= set(seen), sorted(seen)
        for name, c in seen.items():
            css_w, css_h = c["css"]
            assert css_w > 0 and css_h > 0, (name, c)
            assert abs(c["width"] - 2 * css_w) <= 1 and abs(c["height"] - 2 * css_h) <= 1, (name, c)
        assert errors == []
    finally:
        context.close()


def test_a_render_that_finishes_after_a_newer_one_draws_nothing(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}&layer=0&head=2", HEAD_READY)
    held = []

    def hold_the_first(route):  # layer 1's views wait until layer 2 is drawn
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route(f"**{SERVICE_PATH}GetViews", hold_the_first)
    drawn = "JSON.parse(document.querySelector('#pane-a canvas.lines').dataset.drawn).layer"
    with page.expect_request(f"**{SERVICE_PATH}GetViews"):
        page.locator("#pane-a select.layer").select_option("1")
    page.locator("#pane-a select.layer").select_option("2")
    page.wait_for_function(f"{drawn} === 2")
    assert len(held) == 1
    with page.expect_response(lambda r: r.request == held[0].request):
        held[0].continue_()
    settle(page)  # the older render has its answer now, and has finished
    assert page.evaluate(drawn) == 2, "the older render (layer 1) drew over the newer one"
    assert page.locator("#pane-a select.layer").input_value() == "2" and "layer=2" in page.url


def test_view_requests_carry_names_and_wire_kinds(stack, page):
    open_view(page, stack, f"model=minilm&text={TEXT}", HEAD_READY)
    made = page.evaluate("""async () => {
        const { views } = await import('/data.js');
        let refused = '';
        try { views.tile('', 0, 0); } catch (err) { refused = err.message; }
        // As the body of a request carries them (JSON leaves out what is undefined).
        const wire = (v) => JSON.parse(JSON.stringify(v));
        return { zoom: wire(views.tile('zoom', 1, 2, [0, 4], null, 'cross')), self: wire(views.headStats('stats')), refused };
    }""")
    assert made["zoom"] == {
        "name": "zoom",
        "kind": "KIND_CROSS",
        "tile": {"layer": 1, "head": 2, "queries": {"start": 0, "stop": 4}},
    }
    assert made["self"] == {"name": "stats", "headStats": {}}  # KIND_SELF: the field left out
    assert "needs a name" in made["refused"]


PROGRESS_SEEN = """
window.progressSeen = [];
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.id !== 'progress-text') continue;
    for (const n of r.addedNodes) window.progressSeen.push(n.textContent);
  }
}).observe(document, { childList: true, subtree: true });
"""


def test_views_stream_in_with_progress(stack, page):
    """GetViews is read as a Connect stream: the progress line counts tensors as pieces arrive,
    so it shows states between the manifest and the last tensor, not only the end."""
    page.add_init_script(PROGRESS_SEEN)
    text = random_text(1400, torch.Generator().manual_seed(3))
    open_view(
        page,
        stack,
        f"model=tiny&text={text}&view=model",
        "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined",
    )
    seen = page.evaluate("window.progressSeen")
    counts = [
        (int(m.group(1)), int(m.group(2)))
        for m in (re.match(r"(\d+) of (\d+) tensors · ", s) for s in seen)
        if m
    ]
    assert counts, f"no streaming progress shown: {seen}"
    total = counts[-1][1]
    stats = page.evaluate("import('/data.js').then((d) => d.serverInfo()).then((s) => s.headStats.length)")
    # The thumbnails, each head statistic, the head classes and the heatmap's pooled map.
    assert total == 3 + stats, counts
    assert any(0 < done < total for done, _ in counts), f"no progress between first and last: {counts}"
    assert (total, total) in counts
    assert seen[-1] == "running the model…", "the line is reset once the stream has ended"
