"""CLIP's image preprocessing in PIL and NumPy: the same pixels CLIPImageProcessor makes.

Shortest side to `size` with bicubic resampling, centre crop to `crop`, scale to [0, 1],
normalise with CLIP's mean and std, channels first. Runs in worker threads (PIL releases
the GIL while it resizes), so preprocessing overlaps the model's compute.

Only the crop is computed: Pillow resizes the source region under the crop straight to
`crop` x `crop` (its `box`), which gives the pixels of resize-then-crop without the
columns a landscape photo loses. Large sources are first shrunk by an integer factor
(`reduce`, a box filter) while at least `REDUCING_GAP` times the target remains, and a JPEG
may arrive already scaled in the DCT domain (`app.ingest.sources.decode_image_at_least`); both keep
the pixels within cosine 0.9999 of CLIPImageProcessor's (bench/results/frontend.md).

The server keeps pixels as uint8 and normalises in the encoder, on the device: a quarter of
float32's bytes to stack, pin and copy.

    spec = PreprocessSpec.from_processor_config(config_dict)
    pixels = preprocess(image, spec)         # float32, (3, 224, 224), normalised
    raw = preprocess_uint8(image, spec)      # uint8, (3, 224, 224); normalise(raw, spec) == pixels
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Part of every cache key (issue: feature cache): bump it when the pixels change.
# 2: DCT-domain JPEG scaling, reduce before resize, uint8 pixels (issue 17).
PREPROCESS_VERSION = 2

# `reduce` by an integer factor only while the source keeps this many times the target's
# pixels per side; 3.0 is where Pillow finds the result indistinguishable from one resize.
REDUCING_GAP = 3.0
# A JPEG is decoded in the DCT domain with its short side at least this many times the
# resize target: at 1x (1/4 scale at 1080p, 1/8 at 12 MP) pixels fell to cosine 0.9996, at 2x
# they stay above 0.9999 (bench/results/frontend.md).
DECODE_SHORT_SIDE_FACTOR = 2

FloatPixels = npt.NDArray[np.float32]
BytePixels = npt.NDArray[np.uint8]
# What the encoder takes: normalised float32, or uint8 it normalises itself.
Pixels = FloatPixels | BytePixels


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def decode_short_side(self) -> int:
        """The short side a decoder may scale a picture down to without losing pixels."""
        return DECODE_SHORT_SIDE_FACTOR * self.size

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any]) -> PreprocessSpec:
        """Read `preprocessor_config.json` as saved with a CLIP checkpoint."""
        size = config.get("size", {})
        crop = config.get("crop_size", {})
        shortest = size.get("shortest_edge", 224) if isinstance(size, Mapping) else int(size)
        crop_side = crop.get("height", shortest) if isinstance(crop, Mapping) else int(crop)
        return cls(
            size=int(shortest),
            crop=int(crop_side),
            mean=_triple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            std=_triple(config.get("image_std", OPENAI_CLIP_STD)),
        )


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(value) for value in values)
    return first, second, third


def resized_size(width: int, height: int, shortest: int) -> tuple[int, int]:
    """(width, height) with the short side at `shortest`, as transformers rounds it."""
    if width <= height:
        return shortest, int(shortest * height / width)
    return int(shortest * width / height), shortest


def preprocess(image: Image.Image, spec: PreprocessSpec) -> FloatPixels:
    """An RGB picture to normalised CHW float32 pixels."""
    return normalise(preprocess_uint8(image, spec), spec)


def preprocess_uint8(
    image: Image.Image,
    spec: PreprocessSpec,
    *,
    full_size: tuple[int, int] | None = None,
    scale: int = 1,
) -> BytePixels:
    """An RGB picture to resized, centre-cropped CHW uint8 pixels.

    `full_size` and `scale` describe a picture decoded at 1/scale (a drafted JPEG): the
    geometry follows the full size, as CLIPImageProcessor would see it.
    """
    width, height = full_size or image.size
    if spec.crop > spec.size:
        # The crop would reach past the resized picture (padding): the plain way.
        cropped = _resize_then_crop(image, spec, width, height)
    else:
        left, top, right, bottom = crop_box(width, height, spec, scale=scale)
        cropped = image.resize(
            (spec.crop, spec.crop),
            Image.Resampling.BICUBIC,
            # Float rounding may put the far edge a hair past the picture, which PIL refuses.
            box=(left, top, min(right, image.width), min(bottom, image.height)),
            reducing_gap=REDUCING_GAP,
        )
    return np.ascontiguousarray(np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1))


def crop_box(
    width: int, height: int, spec: PreprocessSpec, *, scale: int = 1
) -> tuple[float, float, float, float]:
    """The region of the source that becomes the centre crop after the short-side resize."""
    resized_width, resized_height = resized_size(width, height, spec.size)
    left = (resized_width - spec.crop) // 2
    top = (resized_height - spec.crop) // 2
    # Source pixels per resized pixel, on each axis (transformers rounds each side down).
    per_x = width / scale / resized_width
    per_y = height / scale / resized_height
    return (
        left * per_x,
        top * per_y,
        (left + spec.crop) * per_x,
        (top + spec.crop) * per_y,
    )


def normalise(pixels: BytePixels, spec: PreprocessSpec) -> FloatPixels:
    """uint8 CHW (or NCHW) pixels to CLIP's normalised float32."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    scaled = pixels.astype(np.float32) * np.float32(1 / 255)
    normalised: FloatPixels = (scaled - mean) / std
    return normalised


def stack(images: Sequence[Pixels]) -> Pixels:
    """Images of one kind, (3, H, W) each, as one (n, 3, H, W) batch of that kind."""
    stacked = np.stack(images)
    if stacked.dtype == np.uint8:
        return stacked.astype(np.uint8, copy=False)
    return stacked.astype(np.float32, copy=False)


def _resize_then_crop(
    image: Image.Image, spec: PreprocessSpec, full_width: int, full_height: int
) -> Image.Image:
    width, height = resized_size(full_width, full_height, spec.size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top = (height - spec.crop) // 2
    left = (width - spec.crop) // 2
    return resized.crop((left, top, left + spec.crop, top + spec.crop))
