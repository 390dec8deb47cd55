"""How close the proxy's image vector is to the seed's reference path, on real photos.

The seed computes `CLIPProcessor` + `CLIPModel.get_image_features` + L2 norm; the proxy
uses its own PIL/NumPy preprocessing and the vision tower alone. This prints the cosine of
the two for every photo, on the test checkpoint and on the real ViT-L/14 architecture with
random weights (same layers and sizes as `openai/clip-vit-large-patch14`).

    python bench/reference_check.py   # writes bench/results/reference_check.md
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

from app.engine.clip import ClipImageEncoder
from app.engine.preprocess import preprocess
from app.engine.test_model import VIT_L14_VISION, make_test_model
from app.ingest.sources import ImageLimits, decode_image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data").glob("*.[pj]*g"))
LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=1 << 30)


def cosines(checkpoint: Path) -> dict[str, float]:
    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = CLIPImageProcessorPil.from_pretrained(checkpoint)
    encoder = ClipImageEncoder.load(str(checkpoint), "cpu", "float32")
    result = {}
    for photo in PHOTOS:
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)[0]
        reference = (features / features.norm()).numpy()
        ours = encoder.encode(
            preprocess(decode_image(photo.read_bytes(), LIMITS, param=None), encoder.spec)[None]
        )[0]
        result[photo.name] = float(np.dot(reference, ours))
    return result


def main() -> None:
    lines = [
        "# Proxy vector vs the seed's reference path (cosine, fp32, CPU)",
        "",
        "Command: `python bench/reference_check.py`",
        "",
        "| checkpoint | " + " | ".join(p.name for p in PHOTOS) + " |",
        "| --- |" + " --- |" * len(PHOTOS),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {
            "test model (make-test-model)": make_test_model(Path(tmp) / "test"),
            "ViT-L/14 architecture, random weights": make_test_model(
                Path(tmp) / "vitl", vision=VIT_L14_VISION
            ),
        }
        for name, checkpoint in checkpoints.items():
            values = cosines(checkpoint)
            lines.append(f"| {name} | " + " | ".join(f"{v:.6f}" for v in values.values()) + " |")
    # The seed's processor reads PNG/JPEG with `.convert("RGB")`; camera.png is grayscale,
    # which both paths expand to three equal channels.
    out = ROOT / "bench" / "results" / "reference_check.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
