"""OCR models side by side, in one run on the corpus of bench/ocr_corpus.py: PP-OCRv4
mobile (rapidocr-onnxruntime 1.4, the models before issue 27) and PP-OCRv6 small (the
models the rapidocr 3.10 wheel ships), each read both ways (`plain` and `layout`), driven by
the same steps, on one onnxruntime thread, taking turns image by image.

    pip install --no-deps "rapidocr-onnxruntime==1.4.4"   # the old models (bench/ocr_v4.py)
    python -m bench.ocr_models      # bench/results/ocr-models.{md,json}
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

from app.engine.ocr import Layout, OcrModel, ocr_identity
from app.engine.ocr_models import RapidOcrEngine
from bench.ocr_corpus import corpus, decode, measure, summarise
from bench.ocr_v4 import V4Engine, v4_identity

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS: tuple[Layout, ...] = ("plain", "layout")


def models() -> dict[str, OcrModel]:
    chosen = {}
    for layout in LAYOUTS:
        chosen[f"v4 {layout}"] = OcrModel(V4Engine.load(threads=1), decode, layout=layout)
        chosen[f"v6 {layout}"] = OcrModel(RapidOcrEngine.load(threads=1), decode, layout=layout)
    return chosen


def main() -> None:
    rows = measure(corpus(), models())
    tables = {name: summarise(found) for name, found in rows.items()}
    names = list(tables)
    machine = f"{platform.processor() or platform.machine()}, 2 CPU cores shared with other jobs"
    lines = [
        "# OCR models: PP-OCRv4 mobile vs PP-OCRv6 small (`python -m bench.ocr_models`)",
        "",
        f"Machine: {machine}; one onnxruntime thread; models taking turns image by image.",
        f"v4: {v4_identity()}. v6: {ocr_identity()} (the models inside the rapidocr wheel).",
        "Both grow boxes by 2.0, detect at most 960 px, no angle classifier, and keep the",
        "proxy's score cuts (0.6; a box covering a quarter of the image: 0.9, two characters).",
        "`plain` reads lines in order (the proxy before issue 27), `layout` rebuilds",
        "indentation, columns and tables (app/engine/ocr_layout.py). v6 pads line crops to",
        "2:1 at least, v4 to RapidOCR's 6.7:1. Corpus: bench/ocr_corpus.py (JPEG q60, ±5°).",
        "",
        "CER with spaces (runs of whitespace as one space), in %:",
        "",
        "| class | heights | images | " + " | ".join(names) + " |",
        "| --- | --- | ---: |" + " ---: |" * len(names),
    ]
    for index, first in enumerate(tables[names[0]]):
        cells = [f"{100 * tables[name][index]['cer_spaces']:.1f}" for name in names]
        lines.append(
            f"| {first['class']} | {first['heights']} | {first['images']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "CER with layout (lines and leading indentation kept), in %, and OCR ms per image:",
        "",
        "| class | heights | " + " | ".join(names) + " | "
        + " | ".join(f"ms {n}" for n in names) + " |",
        "| --- | --- |" + " ---: |" * (2 * len(names)),
    ]  # fmt: skip
    for index, first in enumerate(tables[names[0]]):
        cers = [f"{100 * tables[name][index]['cer_layout']:.1f}" for name in names]
        times = [f"{tables[name][index]['ms_p50']:.0f}" for name in names]
        head = f"| {first['class']} | {first['heights']} | "
        lines.append(head + " | ".join(cers + times) + " |")
    lines += ["", "OCR ms per image, whole corpus (p50 / mean):", ""]
    base = statistics.median(row["ms"] for row in rows[names[0]])
    for name in names:
        spent = [float(row["ms"]) for row in rows[name]]
        p50 = statistics.median(spent)
        lines.append(
            f"- {name}: {p50:.0f} / {statistics.mean(spent):.0f} ms ({p50 / base:.2f}x {names[0]})"
        )
    worst = sorted(rows["v6 layout"], key=lambda row: -row["cer_spaces"])[:6]
    lines += ["", "Worst readings of v6 layout (CER with spaces):", ""]
    lines += [
        f"- {r['kind']} {r['height']} px {r['rotation']:+d}°: {r['cer_spaces']:.0%}; "
        f"read {r['read']!r} for {r['reference']!r}"
        for r in worst
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ocr-models.md").write_text("\n".join(lines) + "\n")
    payload: dict[str, Any] = {"machine": machine, "summary": tables, "rows": rows}
    (RESULTS / "ocr-models.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
