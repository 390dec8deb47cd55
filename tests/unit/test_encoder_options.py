"""The encoder's speed options keep the vectors: bf16 and int8 against the seed's fp32 path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.clip import ClipImageEncoder
from app.engine.clip_options import cpu_has_native_bf16, resolve_dtype
from app.engine.preprocess import preprocess
from tests.helpers import DATA, PHOTOS, cosine


def encode_photos(encoder: ClipImageEncoder) -> dict[str, np.ndarray]:
    pixels = np.stack(
        [preprocess(Image.open(DATA / name).convert("RGB"), encoder.spec) for name in PHOTOS]
    )
    return dict(zip(PHOTOS, encoder.encode(pixels), strict=True))


@pytest.mark.parametrize(
    ("dtype", "quantize", "bar"),
    [("float32", "none", 0.9999), ("bfloat16", "none", 0.999), ("float32", "int8", 0.99)],
)
def test_speed_options_match_the_reference(
    test_model_dir: Path,
    reference_vectors: dict[str, np.ndarray],
    dtype: str,
    quantize: str,
    bar: float,
) -> None:
    encoder = ClipImageEncoder.load(str(test_model_dir), "cpu", dtype, quantize=quantize)

    vectors = encode_photos(encoder)

    for name, vector in vectors.items():
        assert vector.dtype == np.float32
        assert np.linalg.norm(vector) == pytest.approx(1, abs=1e-5)
        assert cosine(vector, reference_vectors[name]) >= bar


def test_auto_dtype_policy() -> None:
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == torch.float32


def test_int8_is_refused_off_the_cpu(test_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        ClipImageEncoder.load(str(test_model_dir), "cuda:0", "float32", quantize="int8")
