"""Image bytes from wherever a client put them, checked, and decoded into an RGB picture.

Three sources: a base64 `data:` URL, a multipart upload, an http(s) URL (fetched by
`SafeFetcher`). Limits apply before work is spent: bytes before decoding, pixels from the
header before the full decode (the decompression-bomb guard).

    data = await read_image_source(source, limits, fetcher)
    image = decode_image(data, limits, param=source.param)   # in a worker thread
    decoded = decode_image_at_least(data, limits, 448, param=source.param)  # for the model

`decode_image_at_least` decodes only the pixels the model needs: a JPEG is decoded in the
DCT domain at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT, Pillow's `draft`) while its
short side stays at or above the asked size, which skips most of the IDCT and colour work
of a phone photo (bench/results/frontend.md).
"""

from __future__ import annotations

import binascii
import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import pillow_heif
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidImage, UnreadableImage
from app.ingest.fetch import SafeFetcher
from app.ingest.limits import image_too_large

# iPhones write HEIC; Pillow reads AVIF itself, HEIF through pillow-heif's opener, which
# applies the container's rotation on decode (and resets the EXIF orientation to match).
pillow_heif.register_heif_opener()

# Formats a chat client sends; anything else (SVG, TIFF, PSD, ICO...) is refused by name.
# MPO is a JPEG with more images behind an MPF index (phones write gain maps and depth maps
# there): its first image is the photo.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "HEIF", "AVIF"})
FORMATS_READ = "PNG, JPEG, WEBP, GIF, HEIC/HEIF or AVIF"  # as users name them
# Formats whose extra frames are not animation (see `_is_animated`).
_STILL_WITH_FRAMES = frozenset({"MPO"})
# The widest panorama or tallest strip accepted (see `_check_header`).
MAX_ASPECT_RATIO = 100
# EXIF orientations that turn the picture by 90 or 270 degrees (width and height swap).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# Base64 where a URL belongs (no scheme, only base64's alphabet, longer than any host name
# would make sense as): the `data:` prefix was forgotten.
_RAW_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]{32,}={0,2}\s*\Z")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I)


class SourceKind(StrEnum):
    data_url = "data_url"
    upload = "upload"
    url = "url"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class ImageSource:
    """Where one image of a request comes from. `param` names it in error messages."""

    kind: SourceKind
    param: str
    url: str = ""
    data: bytes = b""

    @classmethod
    def from_url(cls, url: str, param: str) -> ImageSource:
        kind = SourceKind.data_url if url[:5].lower() == "data:" else SourceKind.url
        return cls(kind=kind, param=param, url=url)


async def read_image_source(
    source: ImageSource, limits: ImageLimits, fetcher: SafeFetcher
) -> bytes:
    """The raw bytes of one image, within the byte limit."""
    if source.kind is SourceKind.upload:
        data = source.data
    elif source.kind is SourceKind.data_url:
        data = decode_data_url(source.url, limits.max_bytes, param=source.param)
    elif _RAW_BASE64.match(source.url):
        raise InvalidImage(
            "this looks like raw base64, not a URL: add the prefix data:image/png;base64, "
            "(data:image/jpeg;base64, for a JPEG) in front of it",
            param=source.param,
            code="invalid_image_url",
        )
    else:
        data = await fetcher.fetch(source.url, param=source.param)
    if not data:
        raise InvalidImage("the image is empty (0 bytes)", param=source.param)
    if len(data) > limits.max_bytes:
        raise image_too_large(limits.max_bytes, source.param)
    return data


def decode_data_url(url: str, max_bytes: int, *, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidImage("a data URL must look like data:image/png;base64,...", param=param)
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise UnreadableImage(f"data URL media type {mime!r} is not an image", param=param)
    start = match.end()
    # Refuse oversized payloads before decoding them: base64 is 4 characters per 3 bytes.
    if (len(url) - start) * 3 // 4 > max_bytes + 3:
        raise image_too_large(max_bytes, param)
    try:
        return _decode_base64(url, start)
    except (binascii.Error, ValueError) as exc:
        raise UnreadableImage("the data URL is not valid base64", param=param) from exc


# Decoded a slice at a time (a multiple of 4 characters), so that besides the URL and the
# image only one slice is alive: `b64decode(url[start:])` would copy the whole payload
# twice first (the slice, then its ASCII bytes).
_BASE64_SLICE = 1024 * 1024


def _decode_base64(text: str, start: int) -> bytes:
    if len(text) - start <= _BASE64_SLICE:
        return binascii.a2b_base64(text[start:], strict_mode=True)
    pieces = bytearray()
    end = len(text)
    for offset in range(start, end, _BASE64_SLICE):
        stop = min(offset + _BASE64_SLICE, end)
        if stop < end and "=" in text[stop - 2 : stop]:
            raise ValueError("padding inside base64 data")
        pieces += binascii.a2b_base64(text[offset:stop], strict_mode=True)
    # One copy more, for one image at a time (this runs on the event loop, not in parallel).
    return bytes(pieces)


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB picture, possibly decoded at 1/`scale` of its size.

    `width` and `height` are the full upright size (what a client sent); `image` holds
    about `width / scale` x `height / scale` pixels covering the whole picture.
    """

    image: Image.Image
    width: int
    height: int
    scale: int = 1


def decode_image(data: bytes, limits: ImageLimits, *, param: str | None) -> Image.Image:
    """Decode, check and normalise an image: upright (EXIF), RGB, fully loaded."""
    return _decode(data, limits, param=param, short_side=0).image


def decode_image_at_least(
    data: bytes, limits: ImageLimits, short_side: int, *, param: str | None
) -> DecodedImage:
    """Like `decode_image`, but a JPEG may come out scaled down, short side >= `short_side`."""
    return _decode(data, limits, param=param, short_side=short_side)


def probe_image(data: bytes, limits: ImageLimits, *, param: str | None) -> DecodedImage:
    """Check the header alone (format, size, bombs) and read the upright size; no pixels.

    For a decoder elsewhere (the GPU's): `image` is the unloaded PIL image, `scale` 1.
    """
    with _image_errors(limits, param):
        opened = Image.open(io.BytesIO(data))
        _check_header(opened, limits, param)
        width, height = opened.size
        if opened.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS:
            width, height = height, width
    return DecodedImage(opened, width, height)


def _decode(
    data: bytes, limits: ImageLimits, *, param: str | None, short_side: int
) -> DecodedImage:
    with _image_errors(limits, param):
        opened = Image.open(io.BytesIO(data))
        _check_header(opened, limits, param)
        full_width, full_height = opened.size
        if short_side > 0 and opened.format in ("JPEG", "MPO"):  # MPO: a JPEG, first frame
            # Keeps the mode; picks the smallest of 1/8..1/1 with both sides >= short_side.
            opened.draft(None, (short_side, short_side))
        decoded_size = opened.size
        opened.load()
        # In place: without an orientation tag it would otherwise copy every pixel.
        ImageOps.exif_transpose(opened, in_place=True)
        image = opened
    # libjpeg scales by 1, 2, 4 or 8 and rounds the size up: the ratio names the factor.
    scale = max(1, round(full_width / decoded_size[0]))
    if image.size != decoded_size:  # EXIF turned it by 90 degrees
        full_width, full_height = full_height, full_width
    return DecodedImage(to_rgb(image), full_width, full_height, scale)


@contextlib.contextmanager
def _image_errors(limits: ImageLimits, param: str | None) -> Iterator[None]:
    """Whatever PIL raises on a bad image becomes `InvalidImage` naming it."""
    try:
        with warnings.catch_warnings():
            # PIL warns before it raises on bombs; the pixel check in _check_header is ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as exc:
        # PIL's own guard fires in open() for sizes far past ours.
        raise InvalidImage(f"image has more than {limits.max_pixels} pixels", param=param) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage(
            f"the data is not a supported image; the formats read: {FORMATS_READ}", param=param
        ) from exc
    except InvalidImage:
        raise
    except Exception as exc:
        # OSError, SyntaxError, ValueError, EOFError are PIL's way of saying truncated or
        # corrupt; crafted files reach struct.error, IndexError and the like in its plugins.
        # Whatever the decoder trips on, it is this image that is bad, not the server.
        raise UnreadableImage("the image is truncated or corrupt", param=param) from exc


def _check_header(image: Image.Image, limits: ImageLimits, param: str | None) -> None:
    if image.format not in ALLOWED_FORMATS:
        raise UnreadableImage(
            f"image format {image.format} is not supported; the formats read: {FORMATS_READ}",
            param=param,
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage("the image has no pixels", param=param)
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"image is {width}x{height}, more than {limits.max_pixels} pixels", param=param
        )
    # Preprocessing scales the short side up to 224: a 100000x1 strip would become a
    # 22400000x224 picture (15 GB). No photo is this thin; refuse it before any work.
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImage(
            f"image is {width}x{height}; sides further apart than {MAX_ASPECT_RATIO}:1 "
            "are not supported",
            param=param,
        )
    if getattr(image, "is_animated", False) and image.format not in _STILL_WITH_FRAMES:
        raise InvalidImage("animated images are not supported; send one frame", param=param)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: transparency over white, 16-bit scaled, palettes expanded."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # PIL's own conversion clips 16-bit values at 255; scale them down instead.
        sixteen_bit = image.mode.startswith("I;16")
        image = image.convert("I")
        high = image.getextrema()[1]
        peak = 65535 if sixteen_bit else max(int(high), 1)  # type: ignore[arg-type]
        image = image.point(lambda value: value * (255 / peak)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
