"""CLIP's image preprocessing in PIL and NumPy: the same pixels CLIPImageProcessor makes.

Shortest side to `size` with bicubic resampling, centre crop to `crop`, scale to [0, 1],
normalise with CLIP's mean and std, channels first. Runs in worker threads (PIL releases
the GIL while it resizes), so preprocessing overlaps the model's compute.

    spec = PreprocessSpec.from_processor_config(config_dict)
    pixels = preprocess(image, spec)   # float32, (3, 224, 224)
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
PREPROCESS_VERSION = 1

Pixels = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

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


def preprocess(image: Image.Image, spec: PreprocessSpec) -> Pixels:
    """An RGB picture to normalised CHW float32 pixels."""
    width, height = resized_size(image.width, image.height, spec.size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top = (height - spec.crop) // 2
    left = (width - spec.crop) // 2
    cropped = resized.crop((left, top, left + spec.crop, top + spec.crop))
    scaled: Pixels = np.asarray(cropped, dtype=np.float32) * np.float32(1 / 255)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normalised: Pixels = (scaled - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
