"""The README's pictures of the viewer's analysis views, taken from a real `attnscope serve` stack
(gRPC server + HTTP gateway, in this process) on the bundled MiniLM with Debian's Chromium:
docs/text-view.png, docs/span-map.png and docs/head-panel.png; and docs/reading-view.png, the text
view after Read on examples/needle.py's hand-set needle model (the planted fact's sentence lit and
ranked first, the query focus map beside it).

    .venv/bin/python docs/screenshots.py [--out docs]

Not a test: it writes files; run it again when a view's look changes.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import sync_playwright

from attnscope import Extractor
from attnscope.benchmarks.browser import launch_chromium
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

PARAGRAPH = (
    "The committee met on Tuesday to review the bridge. The engineer said the old cables were "
    "rusting and that the deck would need new supports before winter. Her report listed three "
    "repairs, and the mayor asked how long the work would take. She answered that the bridge "
    "could stay open while the crews replaced the cables one by one. The council approved the "
    "plan, and the first crew started on Monday. By the end of the month the north span had new "
    "cables, and the engineer wrote that the deck was safe again."
)
SHORT = "The doctor asked the nurse a question. She said she would help."
IDLE = "window.attnscopeIdle && window.attnscopeIdle()"
TEXT_READY = "window.attnscopeTimings && window.attnscopeTimings.textReadyMs !== undefined"
NEEDLE = Path(__file__).resolve().parents[1] / "examples" / "needle.py"


def needle_example():
    """examples/needle.py as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("needle_example", NEEDLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_the_answer(page) -> None:
    """Read (the answer's tokens selected), then a jump to the top passage, which outlines it."""
    page.locator("#pane-a button.read").click()
    page.wait_for_function("document.querySelector('#pane-a .focus-heads li')", timeout=120_000)
    page.wait_for_function(IDLE, timeout=120_000)
    page.locator("#pane-a .passages button.passage").first.click()


def shoot(page, base: str, query: str, ready: str, target: str, path: Path, before=None) -> None:
    page.goto(f"{base}/?{query}")
    page.wait_for_function(ready, timeout=120_000)
    page.wait_for_function(IDLE, timeout=120_000)
    if before:
        before(page)
        page.wait_for_function(IDLE, timeout=120_000)
    page.mouse.move(0, 0)
    page.locator(target).screenshot(path=str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    extractor = Extractor.from_pretrained()
    tokens = extractor.trace(PARAGRAPH).tokens
    she = tokens.index("she")  # "She answered ...": what does it read?
    needle = needle_example()
    words = needle.word_tokenizer()
    planted = Extractor(needle.planted_model(words, positions=1024), words)
    prompt, _ = needle.haystack(words, 400, depth=0.6, seed=5)
    server = BackgroundServer(AttentionCore({"minilm": extractor, "planted": planted}))
    gateway = Gateway(server.address, port=0)
    gateway.start()
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
            text = quote(PARAGRAPH)
            shoot(
                page,
                gateway.url,
                f"model=minilm&text={text}&view=text&shade=from&sel={she}&layers=2-5&passage=16",
                TEXT_READY,
                "#panes",
                out / "text-view.png",
                before=lambda page: page.locator("#pane-a .passages button.passage").first.click(),
            )
            shoot(
                page,
                gateway.url,
                f"model=planted&text={quote(prompt)}&view=text&generate=3&passage=sentences",
                TEXT_READY,
                "#panes",
                out / "reading-view.png",
                before=read_the_answer,
            )
            shoot(
                page,
                gateway.url,
                f"model=minilm&text={text}&view=model&maps=spans&layer=1&head=6",
                "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined",
                "#pane-a .grid-wrap",
                out / "span-map.png",
            )
            page.set_viewport_size({"width": 1700, "height": 760})  # the table beside the lines, whole
            shoot(
                page,
                gateway.url,
                f"model=minilm&text={quote(SHORT)}&layer=0",
                "window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined",
                "#pane-a .head-body",
                out / "head-panel.png",
            )
            browser.close()
    finally:
        gateway.stop()
        server.stop()


if __name__ == "__main__":
    main()
