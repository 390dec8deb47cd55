"""What reading documents costs and how well it reads: text-layer pages per second on one
core, a scanned A4 page through render + OCR on one core with its CER, CER of text layers
(English, Chinese) and of scanned pages (English, Chinese at 150 DPI), and the peak RSS of
reading a 50 MiB, 500-page PDF.

Every PDF is made here (tests/pdfs.py: reportlab; DejaVu Sans for English text layers,
Adobe's STSong-Light CID font for Chinese ones, since reportlab embeds no CFF outlines;
scans are drawn with DejaVu Sans and Noto Sans CJK SC by Pillow at 150 DPI). CER is the edit
distance over the written text's length, whitespace runs folded to one space.

    python -m bench.documents     # about 2 minutes on 2 shared cores; bench/results/documents.*
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from app.documents.extract import RenderLimits, extract_pdf
from app.documents.worker import ExtractionWorkers
from app.engine.ocr import OcrModel
from tests import pdfs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def one_core() -> None:
    """Everything below runs on one CPU (ONNX Runtime is given one thread too)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def text_layer(model_pages: int = 100) -> dict[str, Any]:
    data, _ = pdfs.english_pdf(pages=model_pages, lines=40, seed=3)
    extract_pdf(data, None, model_pages, RenderLimits())  # warm
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        result = extract_pdf(data, None, model_pages, RenderLimits())
        runs.append(time.perf_counter() - started)
    assert len(result.pages) == model_pages
    best, median = min(runs), statistics.median(runs)
    # The same through the server's path: a fresh reader process per document.
    workers = ExtractionWorkers(workers=1, memory_bytes=2048 * 1024 * 1024)
    process_runs = []
    for _ in range(3):
        started = time.perf_counter()
        asyncio.run(workers.extract(data, None, model_pages, RenderLimits()))
        process_runs.append(time.perf_counter() - started)
    return {
        "pages": model_pages,
        "chars_per_page": round(sum(len(p.text) for p in result.pages) / model_pages),
        "in_process_s_median": round(median, 4),
        "in_process_pages_per_s": round(model_pages / median, 1),
        "in_process_pages_per_s_best": round(model_pages / best, 1),
        "reader_process_s_median": round(statistics.median(process_runs), 4),
        "reader_process_pages_per_s": round(model_pages / statistics.median(process_runs), 1),
    }


def text_cer() -> dict[str, Any]:
    out = {}
    for name, (data, written) in {
        "english": pdfs.english_pdf(pages=10, lines=40, seed=5),
        "chinese": pdfs.chinese_pdf(pages=10, lines=30, seed=5),
    }.items():
        result = extract_pdf(data, None, 100, RenderLimits())
        rates = [pdfs.cer(page.text, written[page.n - 1]) for page in result.pages]
        out[name] = {"pages": len(rates), "cer_mean": round(statistics.mean(rates), 5)}
    return out


def scanned(model: OcrModel, cjk: bool, pages: int = 3) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in range(pages):
        if cjk:
            lines = pdfs.chinese_lines(30, seed=100 + seed, width=30)
        else:
            lines = pdfs.english_lines(35, seed=100 + seed)
        data = pdfs.image_pdf_pages([pdfs.page_image(lines, cjk=cjk, dpi=150, size_pt=11)])
        started = time.perf_counter()
        [page] = extract_pdf(data, None, 1, RenderLimits()).pages
        rendered = time.perf_counter()
        picture = Image.open(io.BytesIO(page.image))
        text = model.read(picture)
        done = time.perf_counter()
        rows.append(
            {
                "render_s": rendered - started,
                "ocr_s": done - rendered,
                "total_s": done - started,
                "cer": pdfs.cer(text, "\n".join(lines)),
                "chars": len("\n".join(lines)),
                "pixels": f"{picture.width}x{picture.height}",
            }
        )
    return {
        "pages": pages,
        "pixels": rows[0]["pixels"],
        "chars_per_page": rows[0]["chars"],
        "render_s_median": round(statistics.median(r["render_s"] for r in rows), 3),
        "ocr_s_median": round(statistics.median(r["ocr_s"] for r in rows), 3),
        "total_s_median": round(statistics.median(r["total_s"] for r in rows), 3),
        "cer_mean": round(statistics.mean(r["cer"] for r in rows), 4),
    }


def big_pdf(pages: int = 500, target_bytes: int = 50 * 1024 * 1024) -> bytes:
    """`pages` pages, each a text layer over a distinct noise photo: about `target_bytes`."""
    rng = random.Random(7)
    side = 288  # a noise JPEG of this side at quality 92 is about 100 KiB
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    pdfs._register_fonts()
    for number in range(pages):
        noise = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        jpeg = io.BytesIO()
        noise.save(jpeg, format="JPEG", quality=92)
        page.drawImage(ImageReader(io.BytesIO(jpeg.getvalue())), 50, 300, width=300, height=300)
        page.setFont("DejaVu", 10)
        y = A4[1] - 50
        for line in pdfs.english_lines(12, seed=number):
            page.drawString(50, y, line)
            y -= 14
        page.showPage()
    page.save()
    return out.getvalue()


def peak_rss(data: bytes) -> dict[str, Any]:
    """The reader process's peak RSS (its own ru_maxrss, reported in its answer) for this
    PDF against the same process reading a one-page PDF, and this process's own growth."""
    workers = ExtractionWorkers(workers=1, memory_bytes=4096 * 1024 * 1024)
    small, _ = pdfs.english_pdf(pages=1, lines=2)
    baseline_kib = asyncio.run(workers.extract(small, None, 1, RenderLimits())).peak_rss_kib
    own_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = asyncio.run(workers.extract(data, None, 500, RenderLimits()))
    seconds = time.perf_counter() - started
    own_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = 1024 * 1024
    growth = (result.peak_rss_kib - baseline_kib) * 1024
    server_growth = (own_after - own_before) * 1024
    return {
        "file_mib": round(len(data) / mib, 1),
        "pages": result.page_count,
        "pages_read": len(result.pages),
        "seconds": round(seconds, 2),
        "reader_baseline_rss_mib": round(baseline_kib / 1024, 1),
        "reader_peak_rss_mib": round(result.peak_rss_kib / 1024, 1),
        "reader_growth_mib": round(growth / mib, 1),
        "reader_growth_x_file": round(growth / len(data), 2),
        "server_side_growth_mib": round(server_growth / mib, 1),
        "server_side_growth_x_file": round(server_growth / len(data), 2),
    }


def main() -> None:
    """`python -m bench.documents [rss] [text] [scan]`: the parts named (all by default),
    merged into bench/results/documents.json."""
    parts = set(sys.argv[1:]) or {"rss", "text", "scan"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "documents.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores (shared)"
    if "rss" in parts:
        big = big_pdf()
        results["peak_rss_500_pages"] = peak_rss(big)
        del big
    one_core()
    if "text" in parts:
        results["text_layer"] = text_layer()
        results["text_cer"] = text_cer()
    if "scan" in parts:
        model = OcrModel.load(threads=1, decode=lambda data, param: Image.open(io.BytesIO(data)))
        model.warm_up()
        results["scanned_english"] = scanned(model, cjk=False)
        results["scanned_chinese"] = scanned(model, cjk=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
