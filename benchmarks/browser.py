"""Debian's Chromium for Playwright, launched one way for the web benchmark and the viewer and
export tests (tests import it from here; benchmarks import nothing from tests/).

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
    if not executable:
        raise RuntimeError(
            "the viewer tests and the web benchmark need Debian's Chromium: "
            "`make test` installs it (apt-get install chromium)"
        )
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
