"""Decoding: every image a client may send, and every way an image can be wrong."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage, PayloadTooLarge
from app.ingest.sources import ImageLimits, decode_data_url, decode_image
from tests.helpers import DATA

LIMITS = ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in its header: the decompression-bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "rocket.jpg", "camera.png"])
def test_photos_decode_to_rgb(name: str) -> None:
    image = decode_image((DATA / name).read_bytes(), LIMITS, param="p")
    assert image.mode == "RGB"
    with Image.open(DATA / name) as original:
        assert image.size == original.size


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats(fmt: str) -> None:
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    assert decode_image(encode(image, fmt), LIMITS, param="p").size == (40, 30)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    decoded = decode_image(encode(image, "JPEG", exif=exif), LIMITS, param="p")
    assert decoded.size == (20, 60)


def test_transparent_palette_is_composited_over_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS, param="p")
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_alpha_is_composited_over_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(encode(image, "PNG"), LIMITS, param="p").getpixel((1, 1)) == (255, 255, 255)


def test_sixteen_bit_grayscale_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    decoded = decode_image(encode(Image.fromarray(ramp), "PNG"), LIMITS, param="p")
    values = np.asarray(decoded)[..., 0]
    assert values.min() == 0 and values.max() == 255  # not clipped to white


def test_cmyk_jpeg_decodes() -> None:
    image = Image.new("CMYK", (10, 10), (0, 255, 255, 0))
    red = decode_image(encode(image, "JPEG"), LIMITS, param="p").getpixel((5, 5))
    assert red[0] > 200 and red[1] < 60  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a supported image"),
        (b"hello, not an image", "not a supported image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not a supported image"),
        ((DATA / "chelsea.png").read_bytes()[:5000], "truncated"),
        (encode(Image.new("RGB", (4, 4)), "BMP"), "format BMP is not supported"),
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "format TIFF is not supported"),
        (png_header_only(10_000, 5_000), "10000x5000, more than 40000000 pixels"),
        (png_header_only(100_000, 100_000), "more than 40000000 pixels"),
    ],
    ids=["empty", "text", "svg", "truncated", "bmp", "tiff", "bomb", "huge-bomb"],
)
def test_bad_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message) as caught:
        decode_image(data, LIMITS, param="messages[0].content[1].image_url")
    assert caught.value.param == "messages[0].content[1].image_url"


def test_animated_gif_is_refused() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InvalidImage, match="animated"):
        decode_image(buffer.getvalue(), LIMITS, param="p")


def test_data_url_checks() -> None:
    png = encode(Image.new("RGB", (2, 2)), "PNG")
    good = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_data_url(good, 1000, param="p") == png
    with pytest.raises(InvalidImage, match="not valid base64"):
        decode_data_url("data:image/png;base64,@@@@", 1000, param="p")
    with pytest.raises(InvalidImage, match="not an image"):
        decode_data_url("data:text/plain;base64,aGVsbG8=", 1000, param="p")
    with pytest.raises(InvalidImage, match="must look like"):
        decode_data_url("data:image/png,rawbytes", 1000, param="p")
    with pytest.raises(PayloadTooLarge):
        decode_data_url("data:image/png;base64," + "A" * 4000, 1000, param="p")


# The images phones send (issue #13): MPO (a JPEG with more images behind an MPF index),
# HEIC, AVIF; each decoded upright.


def two_halves(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Left half blue, right half red: which side ends on top tells the rotation applied."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, size[0] // 2, size[1]))
    return image


def rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: the left half ends on top
    return exif.tobytes()


def test_mpo_decodes_its_primary_image() -> None:
    primary = two_halves()
    gain_map = Image.new("RGB", (32, 24), (0, 255, 0))
    data = encode(primary, "MPO", save_all=True, append_images=[gain_map])
    assert b"MPF\0" in data[:4096]  # an MPF index in APP2, as phones write it
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "MPO" and getattr(opened, "n_frames", 1) == 2
    decoded = decode_image(data, LIMITS, param="p")
    assert decoded.size == (64, 48)
    assert pixel(decoded, (5, 5))[2] > 200 and pixel(decoded, (60, 5))[0] > 200


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "MPO"])
def test_phone_formats_decode_upright(fmt: str) -> None:
    import pillow_heif  # noqa: F401  (app.ingest.sources registered its opener; the test writes HEIC)

    options: dict[str, object] = {"exif": rotated_exif()}
    if fmt == "MPO":
        options |= {"save_all": True, "append_images": [Image.new("RGB", (8, 8))]}
    decoded = decode_image(encode(two_halves(), fmt, **options), LIMITS, param="p")
    assert decoded.mode == "RGB"
    assert decoded.size == (48, 64)
    top, bottom = pixel(decoded, (24, 5)), pixel(decoded, (24, 58))
    assert top[2] > 200 and top[0] < 60, top  # blue (the left half) is on top
    assert bottom[0] > 200 and bottom[2] < 60, bottom


def test_heic_written_by_pillow_heif() -> None:
    import pillow_heif

    pixels = np.asarray(two_halves((80, 60)))
    heif = pillow_heif.from_bytes(mode="RGB", size=(80, 60), data=pixels.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=90)
    assert buffer.getvalue()[4:12] == b"ftypheic"
    decoded = decode_image(buffer.getvalue(), LIMITS, param="p")
    assert decoded.size == (80, 60)
    assert pixel(decoded, (10, 30))[2] > 200 and pixel(decoded, (70, 30))[0] > 200


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF", "GIF", "WEBP", "PNG"])
def test_animations_stay_refused(fmt: str) -> None:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InvalidImage, match="animated"):
        decode_image(data, LIMITS, param="p")
