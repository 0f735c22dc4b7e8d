"""The viewer on an image: Debian's Chromium driven by Playwright against a real gRPC server and
HTTP gateway serving a tiny ViT (loaded from a saved checkpoint with its image processor; the
stack of tests/test_image_service.py). Upload a PNG, Run, and read the image panel's overlay
canvas: the patch grid, a heat map over the patches that follows the selected query patch, the
query's outline; patch labels in the views. Any JavaScript error or console error fails a test."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import test_image_service
import test_viewer
import torch

playwright_api = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image", reason="images need Pillow")
WIDTH, ROWS, COLS = 260, 4, 4  # web/views/image.js: the panel's width; the ViT's 4×4 patches
CELL = WIDTH / COLS
OVERLAY = "#pane-a canvas.overlay"
# Fixtures and helpers shared with the service's image tests and the viewer's tests: the real
# gRPC server with the tiny ViT ("vit", from its saved checkpoint) and a tiny Llama ("text"), and
# the HTTP gateway in front of it.
checkpoint = test_image_service.checkpoint
server = test_image_service.server
gateway = test_image_service.gateway
browser = test_viewer.browser  # Chromium, once per module
settle = test_viewer.settle  # wait until the viewer shows its state


@pytest.fixture(scope="module")
def stack(gateway):
    return gateway.url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def png() -> bytes:
    data = torch.randint(0, 256, (48, 48, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    out = io.BytesIO()
    Image.fromarray(data.numpy(), mode="RGB").save(out, "PNG")
    return out.getvalue()


def overlay_pixels(page) -> np.ndarray:
    """The overlay canvas's RGBA pixels, [height, width, 4] (device_scale_factor 1), handed over as
    a lossless PNG (a list of every byte takes seconds to cross)."""
    url = page.evaluate("(sel) => document.querySelector(sel).toDataURL('image/png')", OVERLAY)
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA")
    return np.asarray(image, dtype=np.uint8)


def cell_alphas(pixels: np.ndarray) -> np.ndarray:
    """The heat's opacity at the centre of each patch, [rows, cols]."""
    centres = [int(CELL * (i + 0.5)) for i in range(ROWS)]
    return pixels[np.ix_(centres, centres)][..., 3].astype(int)


def drawn(page) -> dict:
    return json.loads(page.locator(OVERLAY).get_attribute("data-drawn"))


def run_image(page, url: str):
    page.goto(f"{url}/?model=vit")
    page.wait_for_function("document.getElementById('status').textContent.includes('pick one')")
    assert page.locator("#image").is_visible() and not page.locator("#text").is_visible()
    page.set_input_files("#image", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": png()}])
    page.wait_for_function("!document.getElementById('image-clear').hidden")
    page.click("#run")
    page.wait_for_function(
        "document.querySelector('#pane-a canvas.overlay') && document.querySelector('#pane-a canvas.overlay').dataset.drawn",
        timeout=60_000,
    )
    settle(page)


def test_the_overlay_shows_the_grid_and_the_query_patch_attention(stack, page):
    run_image(page, stack)
    assert "17 tokens (4×4 patches of noise.png)" in page.locator("#status").inner_text()
    assert page.locator("#pane-a .input-image").evaluate("img => img.complete && img.naturalWidth") == 48
    assert drawn(page)["query"] == 0  # no query pinned: [CLS]'s attention
    assert (
        "attention of “[CLS]”, layer 0, mean of 4 heads" in page.locator("#pane-a .image-note").inner_text()
    )
    before = overlay_pixels(page)
    assert before.shape == (WIDTH, WIDTH, 4)
    # Grid lines: the inner lines at x = y = 65, 130, 195 are light (white at 75% over the heat).
    for at in (65, 130, 195):
        for line in (before[at, 10:250], before[10:250, at]):
            assert (line[:, 3] > 150).all() and (line[:, :3].min(axis=1) > 120).all(), at
    heat = cell_alphas(before)
    assert heat.max() > 150 and heat.max() - heat.min() > 20, heat  # a heat map, not a flat fill
    r, g, b, _ = before[int(CELL / 2), int(CELL / 2)]
    assert r > g and r > b, "the heat is red"
    # Pin patch 2,1 (token 1 + 2·4 + 1 = 10) by clicking it on the image.
    page.locator(OVERLAY).click(position={"x": CELL * 1.5, "y": CELL * 2.5})
    page.wait_for_function("location.search.includes('query=10')")
    settle(page)
    assert drawn(page)["query"] == 10
    assert "attention of “patch 2,1”" in page.locator("#pane-a .image-note").inner_text()
    after = overlay_pixels(page)
    assert not np.array_equal(cell_alphas(after), heat), "the heat map follows the query"
    r, g, b, a = after[int(CELL * 2) + 2, int(CELL * 1.5)]  # on the query patch's outline
    assert a == 255 and b > 200 and g > 150 and r < 80, (r, g, b, a)
    # One head only: the overlay shows that head's weights.
    page.locator("#pane-a .head-square[data-head='2']").dblclick()
    page.wait_for_function("location.search.includes('head=2')")
    settle(page)
    assert drawn(page)["heads"] == [2]
    assert not np.array_equal(cell_alphas(overlay_pixels(page)), cell_alphas(after))
    # Hovering a query token in the head view previews its attention on the image.
    box = page.locator("#pane-a canvas.lines").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 18 * 16 + 9)  # query token 16: patch 3,3
    settle(page)
    assert drawn(page)["query"] == 16


def test_the_views_label_patches_as_tokens(stack, page):
    run_image(page, stack)
    page.click("#tabs button[data-view='neuron']")
    page.wait_for_function(
        "document.querySelector('#pane-a .query-tokens') && document.querySelector('#pane-a .query-tokens').textContent.includes('patch 3,3')",
        timeout=60_000,
    )
    tokens = page.locator("#pane-a .query-tokens .token").all_inner_texts()
    assert tokens[:3] == ["[CLS]", "patch 0,0", "patch 0,1"] and len(tokens) == 17
    page.click("#tabs button[data-view='model']")
    page.wait_for_function(  # 17 tokens: the detail heatmap holds every position exactly
        "document.querySelector('#pane-a .region') && document.querySelector('#pane-a .region').textContent.includes('(exact')",
        timeout=60_000,
    )
    settle(page)
    # Back to text on another model: the image panel goes, the text box comes back.
    page.click("#tabs button[data-view='head']")
    settle(page)
    assert page.locator("#pane-a .image-panel").is_visible()
    page.select_option("#model", "text")
    assert page.locator("#text").is_visible() and not page.locator("#image").is_visible()
    page.fill("#text", "w1 w2 w3 w4")
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('heads · text')", timeout=60_000
    )
    settle(page)
    assert page.locator("#pane-a .image-panel").is_hidden()
