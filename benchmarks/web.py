"""Viewer benchmark, through the same browser as the tests (Debian's Chromium via Playwright).

    python -m benchmarks.web [--repeats 5] [--out benchmarks/results]
    python -m benchmarks.web --screenshots docs [--url http://127.0.0.1:8000]   # README's pictures

* model view: time to draw the 12 × 12 grid of pooled thumbnails for a 4,096-token input
  (target < 1 s), measured inside the page around the drawing code (data already fetched), and,
  once, the time from page load to the first drawn grid (model run on the CPU, fetch, draw);
* head view at 4,096 tokens: the time to draw the rows in view (a scroll redraw) and the time
  from a mousemove over a query token to the redrawn canvas (target < 50 ms), measured inside the
  page: the handler only records the hover, the next animation frame draws (so up to one frame
  interval of waiting is included).
The model is a random 12-layer, 12-head Llama built from a config (no download), served by a real
`attnscope serve` stack (gRPC server + HTTP gateway) on loopback.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import transformers as tf
from playwright.sync_api import sync_playwright
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from attnscope import Extractor
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

from .browser import launch_chromium
from .common import RESULTS, environment, write


def word_tokenizer() -> tf.PreTrainedTokenizerFast:
    """Whitespace words w0..w99 (ids 4..103) between [CLS] and [SEP]: n words are n + 2 tokens."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def model_12x12() -> Extractor:
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=96,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=128,
        vocab_size=128,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return Extractor(tf.LlamaForCausalLM(config).model.eval(), word_tokenizer())


def words(n: int) -> str:
    return " ".join(f"w{(i * 7) % 100}" for i in range(n))


#: The README's screenshots: (file, the viewer's state as a query string, viewport width), of the
#: bundled model (the model view is wide enough for the head's detail beside the grid).
SCREENSHOTS = (
    ("head-view.png", "layer=2&query=9", 1280),
    ("model-view.png", "view=model&sort=previous_token&layer=0&head=2&query=9", 1700),
    ("neuron-view.png", "view=neuron&layer=2&head=8&query=9", 1280),
)


def screenshots(url: str, out: Path, height: int = 1000) -> None:
    """The README's screenshots from a running `attnscope serve` (`make run`) on the bundled model:
    each view in the light theme, the page's top `height` pixels."""
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for name, state, width in SCREENSHOTS:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url.rstrip('/')}/?{state}")
            page.wait_for_function(
                "window.attnscopeTimings && window.attnscopeTimings.renders >= 1 && window.attnscopeIdle()",
                timeout=120_000,
            )
            page.screenshot(path=str(out / name), clip={"x": 0, "y": 0, "width": width, "height": height})
            page.close()
            print(f"wrote {out / name}")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--screenshots", type=Path, help="write the README's screenshots here instead")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running viewer (--screenshots)")
    args = parser.parse_args(argv)
    if args.screenshots:
        screenshots(args.url, args.screenshots)
        return 0
    core = AttentionCore({"llama-12x12": model_12x12()}, Limits(max_tokens=8192))
    server = BackgroundServer(core, warm_up=False)
    gateway = Gateway(server.address, port=0)
    gateway.start()
    rows = []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Model view, 4,096 tokens: redraw the grid `repeats` times (a resize redraws from cached data).
            page.goto(f"{gateway.url}/?view=model&text={words(4094)}")
            page.wait_for_function(
                "window.attnscopeTimings && window.attnscopeTimings.modelDrawMs !== undefined",
                timeout=600_000,
            )
            ready = page.evaluate("window.attnscopeTimings.modelReadyMs")
            rows.append(
                {
                    "measure": "model view from page load (trace on CPU, fetch, draw)",
                    "tokens": 4096,
                    "median_ms": ready,
                    "max_ms": ready,
                    "target_ms": None,
                }
            )
            draws = []
            for i in range(args.repeats):
                renders = page.evaluate("window.attnscopeTimings.renders")
                page.set_viewport_size({"width": 1400 - 10 * ((i + 1) % 2), "height": 1000})
                page.wait_for_function(
                    f"window.attnscopeTimings.renders > {renders} && window.attnscopeIdle()"
                )
                draws.append(page.evaluate("window.attnscopeTimings.modelDrawMs"))
            rows.append(
                {
                    "measure": "model view draw, 12×12 heads",
                    "tokens": 4096,
                    "median_ms": statistics.median(draws),
                    "max_ms": max(draws),
                    "target_ms": 1000,
                }
            )
            # Head view, 4,096 tokens: scroll redraws, then hovers.
            page.goto(f"{gateway.url}/?view=head&text={words(4094)}")
            page.wait_for_function(
                "window.attnscopeTimings && window.attnscopeTimings.headDrawMs !== undefined", timeout=600_000
            )
            scrolls = []
            for i in range(args.repeats * 4):
                page.evaluate(f"document.querySelector('#pane-a .scroller').scrollTop = {18 * 97 * (i + 1)}")
                page.wait_for_function(
                    f"JSON.parse(document.querySelector('#pane-a canvas.lines').dataset.drawn).first >= {97 * (i + 1) - 1}"
                    " && window.attnscopeIdle()"
                )
                scrolls.append(page.evaluate("window.attnscopeTimings.headDrawMs"))
            rows.append(
                {
                    "measure": "head view draw (rows in view, top-k lines)",
                    "tokens": 4096,
                    "median_ms": statistics.median(scrolls),
                    "max_ms": max(scrolls),
                    "target_ms": 50,
                }
            )
            page.evaluate("document.querySelector('#pane-a .scroller').scrollTop = 0")
            page.wait_for_function("window.attnscopeIdle()")
            canvas = page.locator("#pane-a canvas.lines").bounding_box()
            hovers = []
            for i in range(args.repeats * 4):
                page.evaluate("delete window.attnscopeTimings.hoverMs")
                page.mouse.move(canvas["x"] + 40, canvas["y"] + 18 * (2 + i % 20) + 9)
                page.wait_for_function(
                    "window.attnscopeTimings.hoverMs !== undefined && window.attnscopeIdle()"
                )
                hovers.append(page.evaluate("window.attnscopeTimings.hoverMs"))
            rows.append(
                {
                    "measure": "head view hover redraw",
                    "tokens": 4096,
                    "median_ms": statistics.median(hovers),
                    "max_ms": max(hovers),
                    "target_ms": 50,
                }
            )
            browser.close()
    finally:
        gateway.stop()
        server.stop()
    for row in rows:
        print(row)
    write("web", environment(), rows, args.out, __doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
