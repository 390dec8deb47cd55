"""Generated images at the sizes clients send: phone photos and screenshots.

Only PIL and NumPy, so the GPU check (bench/gpu.py) can use it on a machine without the
server's dependencies; tests reach it through tests/helpers.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DATA = Path(__file__).parent / "data"


def phone_photo(
    size: tuple[int, int], *, photo: str = "chelsea.png", fmt: str = "JPEG", seed: int = 0
) -> bytes:
    """A photo re-encoded at a camera's size: a test photo scaled up, with sensor-like
    grain (without it a scaled-up picture compresses far better than a real one: a 12 MP
    JPEG at quality 90 comes to about 2.5 MB, as a phone's does)."""
    with Image.open(DATA / photo) as opened:
        scaled = opened.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    grain = np.random.default_rng(seed).normal(0, 6, (size[1], size[0], 3))
    noisy = np.clip(np.asarray(scaled, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(noisy).save(buffer, fmt, **options)
    return buffer.getvalue()


def screenshot(size: tuple[int, int], seed: int = 0) -> bytes:
    """A UI-like PNG: a dark sidebar, lines of text, a grid of coloured icons."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (246, 247, 249))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((0, 0, width // 5, height), fill=(32, 36, 44))
    for row in range(40, height - 20, 26):
        length = int(rng.integers(20, 90))
        text = " ".join("lorem ipsum dolor sit amet" for _ in range(length // 20 + 1))[:length]
        red, green, blue = (int(value) for value in rng.integers(20, 90, 3))
        draw.text((width // 5 + 30, row), text, fill=(red, green, blue))
        draw.text((16, row), text[:18], fill=(200, 204, 210))
    for index in range(24):
        x = width - 420 + (index % 6) * 64
        y = 60 + (index // 6) * 64
        red, green, blue = (int(value) for value in rng.integers(0, 255, 3))
        draw.rounded_rectangle((x, y, x + 48, y + 48), radius=10, fill=(red, green, blue))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
