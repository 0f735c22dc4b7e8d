"""The viewer's files: only pages, modules and styles inside the package's web/ folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: What the viewer's folder serves (not the package's Python files).
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


def web_root() -> Path:
    return Path(str(resources.files("attnscope.web"))).resolve()


def find(path: str, root: Path | None = None) -> Path | None:
    """The file a URL path names ("/" = index.html), or None if it is not one the viewer serves
    (outside web/, another type, missing)."""
    root = root or web_root()
    rel = path.lstrip("/") or "index.html"
    if "\x00" in rel:
        return None
    target = (root / rel).resolve()
    if root not in target.parents or target.suffix not in STATIC_TYPES or not target.is_file():
        return None
    return target
