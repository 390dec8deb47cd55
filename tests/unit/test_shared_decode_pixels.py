"""CLIP's input from the request's one full decode (reduced by `preprocess_uint8`) is the
input it made from its own reduced-scale decode, within cosine 0.9999 (issue 27): the
photos of tests/data as they are and as 1080p and 12 MP JPEGs, which libjpeg reduces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.engine.preprocess import PreprocessSpec, normalise, preprocess_uint8
from app.ingest.sources import ImageLimits, decode_image, decode_image_at_least
from tests.helpers import DATA

SPEC = PreprocessSpec()
LIMITS = ImageLimits(max_bytes=64 * 1024 * 1024, max_pixels=50_000_000)
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg")


def as_jpeg(name: str, size: tuple[int, int]) -> bytes:
    photo = Image.open(DATA / name).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def reduced_path(data: bytes) -> np.ndarray:
    """Today's CLIP-alone path: a JPEG decoded at a reduced scale, then preprocessed."""
    decoded = decode_image_at_least(data, LIMITS, SPEC.decode_short_side, param=None)
    size = (decoded.width, decoded.height)
    return normalise(
        preprocess_uint8(decoded.image, SPEC, full_size=size, scale=decoded.scale), SPEC
    )


def shared_path(data: bytes) -> np.ndarray:
    """The describe miss's path: one full decode, reduced by preprocessing."""
    return normalise(preprocess_uint8(decode_image(data, LIMITS, param=None), SPEC), SPEC)


@pytest.mark.parametrize(
    "data",
    [
        *((DATA / name).read_bytes() for name in PHOTOS),
        *(as_jpeg(name, (1920, 1080)) for name in ("chelsea.png", "coffee.png")),
        as_jpeg("rocket.jpg", (1080, 1920)),
        as_jpeg("astronaut.png", (4032, 3024)),
    ],
    ids=[*PHOTOS, "chelsea-1080p", "coffee-1080p", "rocket-1080p-portrait", "astronaut-12mp"],
)
def test_clip_input_from_the_shared_decode_matches_its_own(data: bytes) -> None:
    assert cosine(reduced_path(data), shared_path(data)) >= 0.9999
