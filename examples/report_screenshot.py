"""The README's screenshot of report.html (docs/report.png): a report of the bundled MiniLM on
examples/report_corpus.txt, opened offline in Debian's Chromium.

    python examples/report_screenshot.py [--out docs/report.png] [--work /tmp/attnscope-report]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnscope.benchmarks.browser import launch_chromium
from attnscope.cli import main as cli_main

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "report.png"))
    parser.add_argument("--work", default="/tmp/attnscope-report-example", help="the report's folder")
    parser.add_argument("--height", type=int, default=1150, help="pixels of the page's top shown")
    args = parser.parse_args()
    if cli_main(["report", "--data", str(HERE / "report_corpus.txt"), "--out", args.work]) != 0:
        return 1
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": args.height})
        page = context.new_page()
        page.goto((Path(args.work) / "report.html").resolve().as_uri())
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
