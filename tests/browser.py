"""Debian's Chromium for Playwright, launched one way for the viewer tests and benchmarks.

Playwright's own browser download does not work on these machines; `make test` installs Debian's.
"""

from __future__ import annotations

import shutil

#: Headless in a container, and no background traffic (the export tests count network attempts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright):
    """A headless Chromium browser from `playwright` (a started sync_playwright())."""
    executable = shutil.which("chromium")
    assert executable, (
        "the viewer tests need Debian's Chromium: `make test` installs it (apt-get install chromium)"
    )
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
