"""OCR throughput by pool shape (OCR_WORKERS x OCR_THREADS) on the cores this process may
use: the measurement behind the default shape (app/runtime/cores.py).

A batch of images (bench/ocr.py's screenshots at 20-48 px, code and errors, and two photos
scaled to 1080p) is submitted at once to a real `WorkerPool` of `OcrModel`s; throughput is
images per second until the last one is read. The shapes run in turns (ABCABC...), so load
from other processes on a shared machine falls on each alike; the median of the rounds.

    python -m bench.ocr_cores      # a few minutes on 2 cores; bench/results/ocr-cores.*
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import platform
import statistics
import time
from typing import Any

from PIL import Image

from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import OcrModel
from app.engine.workers import WorkerPool
from app.runtime.cores import ocr_shape, usable_cores
from bench.ocr import RESULTS
from bench.ocr_corpus import corpus
from bench.ocr_gate import photo

ROUNDS = 3


def decode(data: bytes, param: str) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def images() -> list[bytes]:
    shots = [s.jpeg for s in corpus() if s.height >= 20 and s.kind in ("code", "error", "en")]
    photos = [photo(name, (1920, 1080)) for name in ("coffee.png", "chelsea.png")]
    return shots[::2] + photos


def shapes(cores: int) -> list[tuple[int, int]]:
    found = {(1, 1), (1, cores), (cores, 1), ocr_shape(cores)}
    if cores >= 2:
        found.add((2, 1))
        found.add((1, 2))
    return sorted(found)


async def throughput(pool: WorkerPool[ImageBytes, str], batch: list[bytes]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(pool.run(ImageBytes(data, str(i), "")) for i, data in enumerate(batch)))
    return len(batch) / (time.perf_counter() - started)


def main() -> None:
    cores = usable_cores()
    batch = images()
    pools: dict[tuple[int, int], WorkerPool[ImageBytes, str]] = {}
    for workers, threads in shapes(cores):
        pool: WorkerPool[ImageBytes, str] = WorkerPool(
            "ocr",
            functools.partial(OcrModel.load, threads=threads, decode=decode),
            workers=workers,
            max_queue=1000,
            timeout_s=600,
        )
        pool.start()
        assert pool.wait_ready(120)
        pools[(workers, threads)] = pool
    rates: dict[tuple[int, int], list[float]] = {shape: [] for shape in pools}
    for _ in range(ROUNDS):
        for shape, pool in pools.items():
            rates[shape].append(asyncio.run(throughput(pool, batch)))
    for pool in pools.values():
        pool.stop()
    rows: list[dict[str, Any]] = [
        {
            "workers": w,
            "threads": t,
            "images_per_s": statistics.median(rates[(w, t)]),
            "rounds": rates[(w, t)],
            "default": (w, t) == ocr_shape(cores),
        }
        for (w, t) in pools
    ]
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "usable_cores": cores,
        "images": len(batch),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ocr-cores.json").write_text(json.dumps(results, indent=1))
    out = [
        "# OCR throughput by pool shape (`python -m bench.ocr_cores`)",
        "",
        f"{cores} usable cores (shared with other processes while it ran); {len(batch)} images",
        "submitted at once (screenshots at 20-48 px and two 1080p photos); median of "
        f"{ROUNDS} rounds, the shapes taking turns.",
        "",
        "| OCR_WORKERS | OCR_THREADS | images/s | rounds | default |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        out.append(
            f"| {row['workers']} | {row['threads']} | {row['images_per_s']:.2f} | "
            + ", ".join(f"{rate:.2f}" for rate in rates[(row["workers"], row["threads"])])
            + f" | {'yes' if row['default'] else ''} |"
        )
    (RESULTS / "ocr-cores.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
