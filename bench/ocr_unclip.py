"""OCR accuracy with RapidOCR's box growth (`det_unclip_ratio`) at its default 1.6 and at the
proxy's 2.0, on bench/ocr_corpus.py's generated corpus, in one run (same images, same machine).

    python -m bench.ocr_unclip      # bench/results/ocr-unclip.{md,json}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import app.engine.ocr_models as ocr_models
from app.engine.ocr import OcrModel
from bench.ocr_corpus import corpus, decode, measure, summarise

RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (1.6, 2.0)


def main() -> None:
    samples = corpus()
    tables: dict[float, list[dict[str, Any]]] = {}
    for ratio in RATIOS:
        ocr_models.UNCLIP_RATIO = ratio  # read by RapidOcrEngine.load
        model = OcrModel.load(threads=1, decode=decode)
        tables[ratio] = summarise(measure(samples, {"now": model})["now"])
    lines = [
        "# OCR: box growth 1.6 (RapidOCR's default) vs 2.0 (clip-proxy's)",
        "",
        "Command: `python -m bench.ocr_unclip` (the corpus of `bench/ocr_corpus.py`: JPEG q60, "
        "±5°, one onnxruntime thread; 2 shared CPU cores). CER in %.",
        "",
        "| class | heights | CER 1.6 | CER 2.0 | CER with spaces 1.6 | CER with spaces 2.0 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for old, new in zip(tables[RATIOS[0]], tables[RATIOS[1]], strict=True):
        lines.append(
            f"| {old['class']} | {old['heights']} | {100 * old['cer']:.2f} | "
            f"{100 * new['cer']:.2f} | {100 * old['cer_spaces']:.2f} | "
            f"{100 * new['cer_spaces']:.2f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ocr-unclip.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "ocr-unclip.json").write_text(
        json.dumps({str(ratio): table for ratio, table in tables.items()}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
