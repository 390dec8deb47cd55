"""What the recommended captioner costs: Salesforce/blip-image-captioning-base's architecture
(BlipForConditionalGeneration with the default BlipConfig, the base checkpoint's shape)
built with random weights, since this machine cannot download the real ones, timed on
the CPU for batches of 1 and 8 images.

Random weights rarely emit the end token, so every caption runs the full 30 new tokens:
a worst case; real captions stop after 8-15 tokens.

    python -m bench.caption    # about 2-4 minutes on 2 CPU cores; bench/results/caption.md
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import BlipConfig, BlipForConditionalGeneration

from app.engine.caption import MAX_NEW_TOKENS

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig()).eval()
    parameters = sum(p.numel() for p in model.parameters())
    size = model.config.vision_config.image_size
    rows = []
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, size, size)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            with torch.inference_mode():
                model.generate(pixel_values=pixels, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            times.append(time.perf_counter() - started)
        rows.append((batch, statistics.median(times)))
    lines = [
        "# Captioner cost (`python -m bench.caption`)",
        "",
        f"Architecture of Salesforce/blip-image-captioning-base, random weights: "
        f"{parameters / 1e6:.0f} M parameters, {parameters * 4 / 2**20:.0f} MiB in fp32, "
        f"{parameters * 2 / 2**20:.0f} MiB in fp16 (the GPU default).",
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        "threads, shared with other jobs; fp32; 30 new tokens per caption (worst case).",
        "",
        "| batch | seconds per batch (median of 3) | seconds per image |",
        "| ---: | ---: | ---: |",
    ]
    lines += [f"| {batch} | {seconds:.2f} | {seconds / batch:.2f} |" for batch, seconds in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "caption.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
