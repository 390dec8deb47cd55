"""GPU check (issue 17): the model, the pool, the front end and memory, on one CUDA device.

Run by bench/gpu_check.sh on a GPU host (under 8 minutes); `--smoke` runs every section
small on the CPU with the test checkpoint, so the script itself is tested where no GPU is.
Sections, each timed against a shared budget and recorded even when one fails:

1. model alone, ViT-L/14 (random weights): images/s at batch 1/8/32/64/128, fp16 eager,
   bf16 eager, fp16 compiled over fixed buckets with CUDA graphs;
2. VRAM: the vision tower's weights and its peak at batch 32 (fp16);
3. cosine of fp16 and bf16 vectors to fp32 on the test photos;
4. the pool with 64 concurrent single-image callers, pipelined and not, against the model
   alone at batch 64;
5. the CPU front end on every core (processes) and nvJPEG decode (threads), images/s;
6. end to end in process (bytes -> decode -> pool -> vector, no HTTP), 1080p JPEGs, with
   GPU decode and without;
7. CUDA out of memory: a batch split under a memory cap, and the CPU fallback.

    python -m bench.gpu --out bench/results/gpu-h200
    python -m bench.gpu --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from app.engine.clip import ClipImageEncoder
from app.engine.gpu_decode import gpu_jpeg_decoder
from app.engine.pool import EncoderPool
from app.engine.pool_jobs import BatchReport, PoolEvents
from app.engine.preprocess import BytePixels, PreprocessSpec, normalise, preprocess_uint8
from app.engine.test_model import VIT_L14_VISION, make_test_model
from app.ingest.sources import ImageLimits, decode_image, decode_image_at_least
from tests.corpus import DATA, phone_photo

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")
LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=1 << 30)
SPEC = PreprocessSpec()
MiB = 1024 * 1024


class Check:
    """Shared state of one run: device, budget, results."""

    def __init__(self, device: str, budget_s: float, smoke: bool, checkpoint: Path) -> None:
        self.device = device
        self.deadline = time.monotonic() + budget_s
        self.smoke = smoke
        self.checkpoint = checkpoint
        self.results: dict[str, Any] = {}
        self.batches = [1, 8] if smoke else [1, 8, 32, 64, 128]
        self.seconds = 0.3 if smoke else 1.5

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def encoder(self, dtype: str, **options: Any) -> ClipImageEncoder:
        return ClipImageEncoder.load(str(self.checkpoint), self.device, dtype, **options)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def photos_uint8() -> list[BytePixels]:
    return [
        preprocess_uint8(decode_image((DATA / name).read_bytes(), LIMITS, param=None), SPEC)
        for name in PHOTOS
    ]


def rate(run: Callable[[], int], seconds: float, sync: Callable[[], None]) -> float:
    """Images per second of `run` (which returns how many it did), after one warm call."""
    run()
    sync()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += run()
    sync()
    return done / (time.perf_counter() - started)


# 1. Model alone


def model_alone(check: Check) -> dict[str, Any]:
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("fp16 eager", "float16", {}),
        ("bf16 eager", "bfloat16", {}),
        ("fp16 compiled, CUDA graphs", "float16", {"compile": True, "cuda_graphs": True}),
    ]
    if check.smoke:
        variants = [("fp32 eager (smoke)", "float32", {})]
    table: dict[str, dict[str, float]] = {}
    for label, dtype, options in variants:
        if check.left() < 90 and table:
            table[label] = {"skipped": 1.0}
            continue
        encoder = check.encoder(dtype, warm_batch=max(check.batches), **options)
        if encoder.buckets:
            encoder.buckets = tuple(check.batches)  # compile only the sizes measured
        started = time.perf_counter()
        encoder.warm_up()
        check.sync()
        row: dict[str, float] = {"warm_up_s": time.perf_counter() - started}
        for batch in check.batches:
            pixels = torch.zeros((batch, 3, SPEC.crop, SPEC.crop), dtype=encoder.dtype)
            on_device = pixels.to(encoder.device)

            def forward(
                tensor: torch.Tensor = on_device,
                size: int = batch,
                model: torch.nn.Module = encoder.model,
            ) -> int:
                with torch.inference_mode():
                    model(pixel_values=tensor)
                return size

            row[f"batch_{batch}"] = rate(forward, check.seconds, check.sync)
        table[label] = row
        release(check)
    return table


def release(check: Check) -> None:
    if check.device.startswith("cuda"):
        torch.cuda.empty_cache()


# 2. VRAM


def vram(check: Check) -> dict[str, Any]:
    if not check.device.startswith("cuda"):
        return {"skipped": "no CUDA device"}
    release(check)
    base = torch.cuda.memory_allocated()
    encoder = check.encoder("float16")
    weights = torch.cuda.memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    encoder.encode(np.zeros((32, 3, SPEC.crop, SPEC.crop), dtype=np.uint8))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del encoder
    release(check)
    return {"weights_mib": weights / MiB, "peak_batch32_mib": peak / MiB}


# 3. Cosine to fp32


def cosine_to_fp32(check: Check) -> dict[str, float]:
    pixels = np.stack(photos_uint8())
    reference = check.encoder("float32").encode(pixels)
    result = {}
    dtypes = ["float16", "bfloat16"] if check.device.startswith("cuda") else ["bfloat16"]
    for dtype in dtypes:
        vectors = check.encoder(dtype).encode(pixels)
        result[dtype] = float(min(np.sum(vectors * reference, axis=1)))
    release(check)
    return result


# 4. Pool with concurrent single-image callers


class Sizes(PoolEvents):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.fallbacks: list[str] = []

    def batch(self, report: BatchReport) -> None:
        self.sizes.append(report.size)

    def cpu_fallback(self, device: str) -> None:
        self.fallbacks.append(device)


async def drive(pool: EncoderPool, images: list[BytePixels], callers: int, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pool.encode(images[index % len(images)])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(index) for index in range(callers)))
    return done / (time.perf_counter() - started)


def pool_callers(check: Check) -> dict[str, Any]:
    callers = 8 if check.smoke else 64
    images = photos_uint8()
    encoder = check.encoder("float16" if check.device.startswith("cuda") else "float32")
    result: dict[str, Any] = {"callers": callers}
    for label, pipeline in (("pipelined", None), ("one batch at a time", False)):
        sizes = Sizes()
        pool = EncoderPool(
            [encoder], max_batch=callers, max_wait_ms=2, events=sizes, pipeline=pipeline
        )
        pool.start()
        try:
            assert pool.wait_ready(300)
            asyncio.run(drive(pool, images, callers, 0.5))  # warm
            result[label] = asyncio.run(drive(pool, images, callers, check.seconds * 2))
            result[f"{label} mean batch"] = statistics.mean(sizes.sizes)
        finally:
            pool.stop()
    # The model alone at the same batch size, same encoder, ready tensors on the device.
    on_device = torch.zeros((callers, 3, SPEC.crop, SPEC.crop), dtype=encoder.dtype).to(
        encoder.device
    )

    def forward() -> int:
        with torch.inference_mode():
            encoder.model(pixel_values=on_device)
        return callers

    result["model alone"] = rate(forward, check.seconds, check.sync)
    result["pipelined / model alone"] = result["pipelined"] / result["model alone"]
    release(check)
    return result


# 5. Front end on every core


def _cpu_front_end(data: bytes) -> int:
    decoded = decode_image_at_least(data, LIMITS, SPEC.decode_short_side, param=None)
    preprocess_uint8(
        decoded.image, SPEC, full_size=(decoded.width, decoded.height), scale=decoded.scale
    )
    return 1


def jpeg_corpus(check: Check) -> dict[str, list[bytes]]:
    count = 1 if check.smoke else 3
    return {
        "jpeg-1080p": [phone_photo((1920, 1080), seed=seed) for seed in range(count)],
        "jpeg-12mp": [phone_photo((4000, 3000), seed=seed) for seed in range(count)],
    }


def front_end(check: Check) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {"cores": cores}
    for kind, blobs in jpeg_corpus(check).items():
        with ProcessPoolExecutor(cores) as executor:

            def batch(executor: ProcessPoolExecutor = executor, blobs: list[bytes] = blobs) -> int:
                return sum(executor.map(_cpu_front_end, blobs * cores * 2))

            result[f"cpu {kind} images/s"] = rate(batch, check.seconds * 2, lambda: None)
    decoder = gpu_jpeg_decoder(check.device, SPEC)
    if decoder is None:
        result["gpu decode"] = "unavailable (no CUDA device or no torchvision)"
        return result
    for kind, blobs in jpeg_corpus(check).items():
        sizes = [decode_image(blob, LIMITS, param=None).size for blob in blobs]
        reference = [_cpu_pixels(blob) for blob in blobs]
        on_gpu = [decoder(blob, w, h) for blob, (w, h) in zip(blobs, sizes, strict=True)]
        result[f"gpu {kind} pixel cosine to cpu (min)"] = min(
            _cosine(normalise(a, SPEC), normalise(b, SPEC))
            for a, b in zip(on_gpu, reference, strict=True)
        )
        with ThreadPoolExecutor(8) as threads:

            def decode_all(
                threads: ThreadPoolExecutor = threads,
                blobs: list[bytes] = blobs,
                sizes: list[tuple[int, int]] = sizes,
            ) -> int:
                jobs = [(b, w, h) for b, (w, h) in zip(blobs, sizes, strict=True)] * 16
                return len(list(threads.map(lambda job: decoder(*job), jobs)))

            result[f"gpu {kind} images/s (8 threads)"] = rate(
                decode_all, check.seconds * 2, check.sync
            )
    return result


def _cpu_pixels(data: bytes) -> BytePixels:
    decoded = decode_image_at_least(data, LIMITS, SPEC.decode_short_side, param=None)
    return preprocess_uint8(
        decoded.image, SPEC, full_size=(decoded.width, decoded.height), scale=decoded.scale
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


# 6. End to end in process


def end_to_end(check: Check) -> dict[str, Any]:
    # Imported here: the pipeline needs redis and orjson, which a bare GPU image may lack.
    from app.engine.image_pipeline import ImagePipeline
    from app.ingest.fetch import FetchPolicy, SafeFetcher
    from app.ingest.sources import ImageSource, SourceKind

    blobs = jpeg_corpus(check)["jpeg-1080p"]
    callers = 16 if check.smoke else 256
    cores = os.cpu_count() or 1
    encoder = check.encoder("float16" if check.device.startswith("cuda") else "float32")
    result: dict[str, Any] = {"callers": callers, "preprocess_threads": cores}
    for label, gpu_decode in (("cpu decode", False), ("gpu decode", True)):
        decoder = gpu_jpeg_decoder(check.device, SPEC) if gpu_decode else None
        if gpu_decode and decoder is None:
            result[label] = "unavailable"
            continue
        pool = EncoderPool([encoder], max_batch=64, max_wait_ms=2)
        pool.start()
        assert pool.wait_ready(300)
        pipeline = ImagePipeline(
            LIMITS, SafeFetcher(FetchPolicy(max_bytes=LIMITS.max_bytes)), preprocess_threads=cores
        )
        pipeline.use_device_decoder(decoder)
        pipeline.attach(pool)
        # Distinct bytes per request would defeat nothing here: there is no cache.
        sources = [ImageSource(kind=SourceKind.upload, param="image", data=blob) for blob in blobs]

        async def run(
            seconds: float,
            pipeline: ImagePipeline = pipeline,
            sources: list[ImageSource] = sources,
        ) -> float:
            done = 0
            stop_at = time.perf_counter() + seconds

            async def caller(index: int) -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await pipeline.embed(sources[index % len(sources)])
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(caller(index) for index in range(callers)))
            return done / (time.perf_counter() - started)

        try:
            asyncio.run(run(0.5))
            result[f"{label} images/s"] = asyncio.run(run(check.seconds * 2))
        finally:
            pipeline.close()
    release(check)
    return result


# 7. Out of memory


def out_of_memory(check: Check) -> dict[str, Any]:
    if not check.device.startswith("cuda"):
        return {"skipped": "no CUDA device"}
    images = photos_uint8()
    release(check)
    total = torch.cuda.get_device_properties(0).total_memory
    encoder = check.encoder("float16")
    weights = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    encoder.encode(np.stack([images[0]] * 32))
    per_32 = torch.cuda.max_memory_allocated() - weights
    release(check)
    result: dict[str, Any] = {"weights_mib": weights / MiB, "batch32_activations_mib": per_32 / MiB}
    try:
        # Room for about 40 images: a batch of 128 must split, the halves fit.
        torch.cuda.set_per_process_memory_fraction((weights + per_32 * 1.25) / total)
        sizes = Sizes()
        pool = EncoderPool([encoder], max_batch=128, max_wait_ms=200, events=sizes)
        pool.start()
        assert pool.wait_ready(120)
        vectors = asyncio.run(_encode_many(pool, [images[i % len(images)] for i in range(128)]))
        result["split: batch sizes run"] = sorted(set(sizes.sizes))
        result["split: all answered"] = all(isinstance(v, np.ndarray) for v in vectors)
        # No room for one image: the worker moves its model to the CPU and answers.
        release(check)
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + MiB) / total)
        more = asyncio.run(_encode_many(pool, images[:2]))
        result["fallback: cpu_fallback events"] = sizes.fallbacks
        result["fallback: all answered"] = all(isinstance(v, np.ndarray) for v in more)
        pool.stop()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        release(check)
    return result


async def _encode_many(pool: EncoderPool, images: list[BytePixels]) -> list[Any]:
    results: list[Any] = await asyncio.gather(
        *(pool.encode(p) for p in images), return_exceptions=True
    )
    return results


# Report


SECTIONS: list[tuple[str, Callable[[Check], Any], float]] = [
    # name, function, seconds it needs left to start
    ("model_alone", model_alone, 200),
    ("vram", vram, 20),
    ("cosine_to_fp32", cosine_to_fp32, 20),
    ("pool_64_callers", pool_callers, 40),
    ("front_end_all_cores", front_end, 40),
    ("end_to_end_1080p", end_to_end, 40),
    ("out_of_memory", out_of_memory, 30),
]


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    meta = results["meta"]
    lines = [
        f"# GPU check: {meta['gpu']} (issue 17)",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}; {meta['cpus']} CPUs; "
        f"ViT-L/14 architecture with random weights. Wall time {meta['wall_s']:.0f} s.",
        "",
    ]
    for name, _, _ in SECTIONS:
        value = results.get(name, "not run (out of time)")
        lines += [f"## {name}", ""]
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict):
                    cells = ", ".join(f"{k} {_fmt(v)}" for k, v in item.items())
                    lines.append(f"- {key}: {cells}")
                else:
                    lines.append(f"- {key}: {_fmt(item)}")
        else:
            lines.append(f"- {value}")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU")
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    device = "cpu" if args.smoke else "cuda:0"
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke on a CPU")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_test_model(
            Path(tmp) / "model", vision=None if args.smoke else VIT_L14_VISION
        )
        check = Check(device, args.budget_s, args.smoke, checkpoint)
        for name, section, needs_s in SECTIONS:
            if check.left() < needs_s:
                check.results[name] = f"skipped: {check.left():.0f} s left, needs {needs_s}"
                continue
            print(f"[{time.monotonic() - started:6.1f} s] {name}", flush=True)
            try:
                check.results[name] = section(check)
            except Exception as exc:  # one broken section must not lose the others
                traceback.print_exc()
                check.results[name] = f"failed: {exc!r}"
            print(f"    {check.results[name]}", flush=True)
            write(args.out, {**check.results, "meta": meta(args, device, started)})
    write(args.out, {**check.results, "meta": meta(args, device, started)})
    print(args.out.with_suffix(".md").read_text())


def meta(args: argparse.Namespace, device: str, started: float) -> dict[str, Any]:
    return {
        "command": "python -m bench.gpu " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else "none (smoke)",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "wall_s": time.monotonic() - started,
    }


if __name__ == "__main__":
    main()
