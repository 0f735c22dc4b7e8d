"""Images on the wire: a request's image file decoded within the server's limits, and the patch
grid a trace's tokens form when they are an image's patches (KindInfo.patch_grid)."""

from __future__ import annotations

import io
import re

from .. import proto
from .errors import InvalidArgument, ResourceExhausted
from .limits import Limits

#: The file formats a request's image may be in (Pillow's names); others are refused unread.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_PATCH = re.compile(r"patch (\d+),(\d+)")


def decode_image(data: bytes, limits: Limits):
    """An RGB PIL image from an image file's bytes, or a ServiceError saying what is wrong: over
    `limits.max_image_bytes` or `limits.max_image_pixels` (read from the header, before any pixel
    is decoded: no decompression bombs), not one of FORMATS, truncated or corrupt."""
    if len(data) > limits.max_image_bytes:
        raise ResourceExhausted(
            f"image is {len(data):,} bytes; this server accepts at most {limits.max_image_bytes:,}"
        )
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - the vision extra is not installed on this server
        raise NotImplementedError(
            "this server cannot read images: install Pillow (pip install 'attnscope[vision]')"
        ) from None
    Image.init()
    formats = [f for f in FORMATS if f in Image.OPEN]
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours
        raise ResourceExhausted(
            f"image: {exc}; this server accepts at most {limits.max_image_pixels:,} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidArgument(
            f"image: the {len(data):,} bytes are not a {', '.join(formats[:-1])} or {formats[-1]} image "
            f"({type(exc).__name__}); send an image file's bytes"
        ) from None
    with im:
        width, height = im.size
        if width * height > limits.max_image_pixels:
            raise ResourceExhausted(
                f"image is {width}×{height} = {width * height:,} pixels; this server accepts at most "
                f"{limits.max_image_pixels:,}: send a smaller image"
            )
        try:
            return im.convert("RGB")  # decodes (the first frame of an animation)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidArgument(
                f"image: the {im.format} file is truncated or corrupt ({type(exc).__name__}: "
                f"{str(exc)[:120]})"
            ) from None


def patch_grid(tokens: list[str]):
    """The PatchGrid of `tokens` when they end in a full grid of `patch r,c` labels (row by row,
    after any special tokens), else None (text)."""
    first = next((i for i, t in enumerate(tokens) if t.startswith("patch ")), None)
    if first is None:
        return None
    cells = [_PATCH.fullmatch(t) for t in tokens[first:]]
    if not all(cells):
        return None
    rows = int(cells[-1].group(1)) + 1
    cols = int(cells[-1].group(2)) + 1
    expected = [f"patch {r},{c}" for r in range(rows) for c in range(cols)]
    if tokens[first:] != expected:
        return None
    return proto.PatchGrid(rows=rows, cols=cols, first_patch=first)
