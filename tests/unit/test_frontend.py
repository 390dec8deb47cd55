"""The image front end: decode only the pixels needed, crop-only resize, uint8 to the model.

Each shortcut is held to the reference it replaces: the pixels within cosine 0.9999 of
CLIPImageProcessor's on the full-size picture, the vectors within 0.99999 of the float
path, the reported size that of the picture the client sent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from app.engine.clip import ClipImageEncoder
from app.engine.clip_options import batch_buckets, pad_to_bucket
from app.engine.gpu_decode import resize_and_crop_tensor
from app.engine.preprocess import (
    PreprocessSpec,
    normalise,
    preprocess,
    preprocess_uint8,
    resized_size,
)
from app.errors import InvalidImage
from app.ingest.sources import ImageLimits, decode_image, decode_image_at_least, probe_image
from tests.corpus import phone_photo
from tests.helpers import DATA, PHOTOS, cosine

LIMITS = ImageLimits(max_bytes=64 * 1024 * 1024, max_pixels=40_000_000)
SPEC = PreprocessSpec()
PROCESSOR = CLIPImageProcessorPil()


def reference_pixels(data: bytes) -> np.ndarray:
    """CLIPImageProcessor on the fully decoded, upright picture."""
    image = decode_image(data, LIMITS, param="p")
    pixels: np.ndarray = PROCESSOR(images=image, return_tensors="np")["pixel_values"][0]
    return pixels


def front_end(data: bytes) -> tuple[np.ndarray, int, int, int]:
    decoded = decode_image_at_least(data, LIMITS, SPEC.decode_short_side, param="p")
    raw = preprocess_uint8(
        decoded.image, SPEC, full_size=(decoded.width, decoded.height), scale=decoded.scale
    )
    return normalise(raw, SPEC), decoded.width, decoded.height, decoded.scale


@pytest.mark.parametrize(
    ("size", "scale"), [((1920, 1080), 2), ((4000, 3000), 4), ((3024, 4032), 4), ((640, 480), 1)]
)
@pytest.mark.parametrize("photo", ["chelsea.png", "astronaut.png"])
def test_jpeg_decoded_smaller_keeps_the_processors_pixels(
    size: tuple[int, int], scale: int, photo: str
) -> None:
    data = phone_photo(size, photo=photo)

    pixels, width, height, used_scale = front_end(data)

    assert used_scale == scale
    assert (width, height) == size
    assert pixels.shape == (3, 224, 224)
    assert cosine(pixels.ravel(), reference_pixels(data).ravel()) >= 0.9999


def test_exif_turned_jpeg_reports_the_upright_size_and_pixels() -> None:
    with Image.open(io.BytesIO(phone_photo((1920, 1080)))) as opened:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        buffer = io.BytesIO()
        opened.save(buffer, "JPEG", quality=90, exif=exif)
    data = buffer.getvalue()

    pixels, width, height, scale = front_end(data)

    assert (width, height, scale) == (1080, 1920, 2)
    assert cosine(pixels.ravel(), reference_pixels(data).ravel()) >= 0.9999
    probed = probe_image(data, LIMITS, param="p")
    assert (probed.width, probed.height) == (1080, 1920)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_large_png_and_webp_are_reduced_within_the_processors_pixels(fmt: str) -> None:
    data = phone_photo((3000, 2000), fmt=fmt, photo="coffee.png")

    pixels, width, height, scale = front_end(data)

    assert (width, height, scale) == (3000, 2000, 1)
    assert cosine(pixels.ravel(), reference_pixels(data).ravel()) >= 0.9999


@pytest.mark.parametrize("name", PHOTOS)
def test_crop_only_resize_gives_resize_then_crop(name: str) -> None:
    with Image.open(DATA / name) as opened:
        image = opened.convert("RGB")
    width, height = resized_size(image.width, image.height, SPEC.size)
    top, left = (height - SPEC.crop) // 2, (width - SPEC.crop) // 2
    plain = image.resize((width, height), Image.Resampling.BICUBIC).crop(
        (left, top, left + SPEC.crop, top + SPEC.crop)
    )
    expected = np.asarray(plain).transpose(2, 0, 1).astype(np.int16)

    ours = preprocess_uint8(image, SPEC).astype(np.int16)

    # Small images reduce nothing: the crop-only resize differs by rounding at most.
    assert np.abs(ours - expected).max() <= 1
    floats = preprocess(image, SPEC)
    assert np.allclose(floats, normalise(ours.astype(np.uint8), SPEC))


def test_device_resize_matches_pil_pixels() -> None:
    """The nvJPEG path's resize and crop, run here on the CPU tensor it would get."""
    data = phone_photo((1920, 1080))
    image = decode_image(data, LIMITS, param="p")
    tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())

    on_device = resize_and_crop_tensor(tensor, SPEC).numpy()

    assert on_device.shape == (3, 224, 224)
    assert on_device.dtype == np.uint8
    assert cosine(normalise(on_device, SPEC).ravel(), reference_pixels(data).ravel()) >= 0.9999


def test_probe_refuses_what_decoding_refuses() -> None:
    with pytest.raises(InvalidImage):
        probe_image(b"\xff\xd8\xff not a jpeg at all", LIMITS, param="p")
    small = ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=1000)
    with pytest.raises(InvalidImage, match="pixels"):
        probe_image(phone_photo((64, 48)), small, param="p")


def test_uint8_pixels_encode_like_normalised_floats(test_model_dir: Path) -> None:
    encoder = ClipImageEncoder.load(str(test_model_dir), "cpu", "float32")
    images = [decode_image((DATA / name).read_bytes(), LIMITS, param="p") for name in PHOTOS]
    raw = np.stack([preprocess_uint8(image, SPEC) for image in images])

    from_bytes = encoder.encode(raw)
    from_floats = encoder.encode(normalise(raw, encoder.spec))

    for a, b in zip(from_bytes, from_floats, strict=True):
        assert cosine(a, b) >= 0.99999


def test_buckets_pad_batches_up_to_a_fixed_size() -> None:
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    batch = np.ones((5, 3, 4, 4), dtype=np.uint8)

    padded = pad_to_bucket(batch, batch_buckets(32))

    assert padded.shape == (8, 3, 4, 4)
    assert padded.dtype == np.uint8
    assert (padded[:5] == 1).all()
    assert (padded[5:] == 0).all()
    assert pad_to_bucket(batch, ()) is batch
    assert pad_to_bucket(np.ones((40, 3, 4, 4), dtype=np.uint8), (1, 2, 32)).shape[0] == 40


@pytest.mark.parametrize("size", [(225, 228), (225, 235), (228, 225)])
def test_crop_box_rounding_past_the_edge_is_clamped(size: tuple[int, int]) -> None:
    # For these sizes the float crop box ends a hair past the picture; PIL would refuse it.
    image = Image.new("RGB", size, (10, 120, 200))

    pixels = preprocess_uint8(image, SPEC)

    assert pixels.shape == (3, 224, 224)
    assert (pixels[:, 112, 112] == (10, 120, 200)).all()
