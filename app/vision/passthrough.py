"""An image made ready for a model that sees it: turned upright as its EXIF says, scaled
to fit `max_side` pixels, every metadata chunk (EXIF with its GPS position, XMP, ICC
comments) left behind, as JPEG (PNG when it has transparency). Used for upstreams on
UPSTREAM_VISION_MODELS and for the describers alike.

    prepared = await asyncio.to_thread(prepare, data, max_side=2048, decode=decode)
    prepared.data_url            # "data:image/jpeg;base64,..."
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

JPEG_QUALITY = 90
# What a JPEG or PNG may carry and still go to a describer as it came: coding details, no
# EXIF, no ICC profile, no comments, XMP or text chunks.
_HARMLESS_INFO = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "adobe",
        "adobe_transform", "progressive", "progression", "gamma", "srgb", "chromaticity",
        "interlace", "aspect",
    }
)  # fmt: skip
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}


@dataclass(frozen=True)
class Prepared:
    mime: str
    data: bytes
    width: int
    height: int

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"


def as_it_came(data: bytes, *, max_side: int) -> Prepared | None:
    """The image itself when it needs nothing done: a JPEG or RGB(A) PNG within `max_side`,
    with no metadata (read from its header only; nothing is decoded). None otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = _MIME.get(image.format or "")
            clean = (
                mime is not None
                and image.mode in ("RGB", "RGBA", "L")
                and max(image.size) <= max_side
                and set(image.info) <= _HARMLESS_INFO
                and not image.getexif()
            )
            return Prepared(mime, data, *image.size) if clean and mime else None
    except (OSError, ValueError, SyntaxError):
        return None


def prepare(data: bytes, *, max_side: int, decode: Callable[[bytes], Image.Image]) -> Prepared:
    """`decode` checks the limits (bytes, pixels) and decodes, as the proxy does for CLIP."""
    image = decode(data)
    image = ImageOps.exif_transpose(image)  # upright; the orientation tag goes with it
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    buffer = io.BytesIO()
    image.info.clear()  # PNG would carry an ICC profile or text chunks found there
    if has_alpha:
        clean = image.convert("RGBA")
        clean.info.clear()
        clean.save(buffer, "PNG", compress_level=3)
        mime = "image/png"
    else:
        clean = image.convert("RGB")
        clean.info.clear()
        clean.save(buffer, "JPEG", quality=JPEG_QUALITY)  # no exif=, no icc: nothing kept
        mime = "image/jpeg"
    return Prepared(mime, buffer.getvalue(), clean.width, clean.height)
