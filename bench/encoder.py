"""Encoder benchmark: the seed's path, the pool through HTTP, and the model alone, side by side.

Runs on the real ViT-L/14 architecture with random weights (the Hub is out of reach; speed
does not depend on the weights), in one process and one run, so the ratios hold even on a
machine other people are loading:

1. seed: one image at a time, CLIPProcessor + CLIPModel.get_image_features, fp32;
2. pool over HTTP: a real uvicorn clip-proxy, N concurrent single-image dry-run chat
   requests (the vectors come back in the body and are checked against the seed's);
3. pool in process: N concurrent `pool.encode` callers on ready pixels (GPU target);
4. ceiling: the model alone on ready tensors at the best batch size.

    python -m bench.encoder --device cpu --concurrency 1,8 --out bench/results/encoder-cpu
    python -m bench.encoder --device cuda --concurrency 1,8,32,64 --variants auto \
        --ceiling-batches 32,64,128,256 --in-process 64 --out bench/results/encoder-gpu

Writes OUT.json, OUT.md and OUT.png (throughput against concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import re
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
from transformers.utils import logging as transformers_logging

from app.config import Settings
from app.engine.clip import ClipImageEncoder
from app.engine.clip_options import resolve_dtype
from app.engine.pool import EncoderPool
from app.engine.preprocess import PreprocessSpec, preprocess
from app.engine.test_model import VIT_L14_VISION, make_test_model
from app.ingest.sources import ImageLimits, decode_image
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]


@dataclass
class Row:
    path: str  # seed | pool-http | pool-inproc | ceiling
    variant: str  # dtype / quantisation, or the batch size for the ceiling
    concurrency: int
    images: int
    seconds: float
    min_cosine_to_seed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def build_checkpoint(directory: Path) -> Path:
    """A CLIP checkpoint with a random ViT-L/14 vision tower (and a tiny text tower)."""
    return make_test_model(directory, vision=VIT_L14_VISION)


def photos() -> list[tuple[str, bytes]]:
    data = ROOT / "tests" / "data"
    return [(name, (data / name).read_bytes()) for name in PHOTOS]


def seed_path(checkpoint: Path, device: str, images: int) -> tuple[Row, dict[str, np.ndarray]]:
    """The seed's code: CLIPProcessor + full CLIPModel in fp32, one image at a time."""
    model = CLIPModel.from_pretrained(checkpoint)
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides the signature
    model.eval()
    processor = CLIPProcessor.from_pretrained(checkpoint)
    pictures = [
        (name, Image.open(ROOT / "tests" / "data" / name).convert("RGB")) for name in PHOTOS
    ]
    reference: dict[str, np.ndarray] = {}

    def one(name: str, image: Image.Image) -> None:
        inputs = processor(images=image, return_tensors="pt").to(device)
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)
        reference[name] = (features / features.norm(dim=-1, keepdim=True))[0].float().cpu().numpy()

    one(*pictures[-1])  # warm-up, untimed: the pool warms its workers too
    sync(device)
    started = time.perf_counter()
    for index in range(images):
        one(*pictures[index % len(pictures)])
    sync(device)
    elapsed = time.perf_counter() - started
    rest = pictures[images:]
    if rest:  # the other reference vectors in one untimed batch
        inputs = processor(images=[image for _, image in rest], return_tensors="pt").to(device)
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)
        features = (features / features.norm(dim=-1, keepdim=True)).float().cpu().numpy()
        reference.update({name: vector for (name, _), vector in zip(rest, features, strict=True)})
    return Row("seed", "fp32 CLIPModel", 1, images, elapsed), reference


class Proxy:
    """A real clip-proxy under uvicorn on loopback, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the proxy did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def data_url(name: str, data: bytes) -> str:
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def drive_http(
    port: int, concurrency: int, requests: int, pictures: list[tuple[str, bytes]]
) -> tuple[float, list[tuple[str, np.ndarray]]]:
    """`requests` single-image dry-run chats, `concurrency` at a time; (seconds, vectors)."""
    urls = [(name, data_url(name, data)) for name, data in pictures]
    vectors: list[tuple[str, np.ndarray]] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=3600, limits=limits
    ) as client:

        async def caller() -> None:
            nonlocal next_index
            while next_index < requests:
                name, url = urls[next_index % len(urls)]
                next_index += 1
                content = [{"type": "image_url", "image_url": {"url": url}}]
                response = await client.post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": content}]},
                    headers={"X-Clip-Proxy-Dry-Run": "true"},
                )
                response.raise_for_status()
                text = response.json()["messages"][0]["content"]
                match = re.search(r"<image>(.*?)</image>", text)
                assert match is not None
                vectors.append((name, np.array(match.group(1).split(","), dtype=np.float64)))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started, vectors


def min_cosine(vectors: list[tuple[str, np.ndarray]], reference: dict[str, np.ndarray]) -> float:
    return min(
        float(v @ reference[n] / (np.linalg.norm(v) * np.linalg.norm(reference[n])))
        for n, v in vectors
    )


def pool_http(
    checkpoint: Path,
    device: str,
    variant: str,
    levels: list[int],
    min_requests: int,
    reference: dict[str, np.ndarray],
    max_batch: int,
) -> list[Row]:
    quantize = "int8" if variant == "int8" else "none"
    dtype = "float32" if variant == "int8" else variant
    settings = Settings(
        upstream_base_url="http://127.0.0.1:9/v1",
        clip_model=str(checkpoint),
        device=device,
        encoder_dtype=dtype,
        encoder_quantize=quantize,
        max_batch=max_batch,
        max_images_per_request=4,
        encode_timeout_s=3600,
    )
    label = f"{variant} ({resolve_dtype(dtype, device)})" if variant == "auto" else variant
    rows = []
    with Proxy(settings) as proxy:
        if device.startswith("cuda"):  # the pool warmed each worker; a GPU wants one more
            asyncio.run(drive_http(proxy.port, 1, 1, photos()))
        for level in levels:
            requests = max(level, min_requests)
            seconds, vectors = asyncio.run(drive_http(proxy.port, level, requests, photos()))
            rows.append(
                Row("pool-http", label, level, requests, seconds, min_cosine(vectors, reference))
            )
            print(rows[-1], flush=True)
    return rows


def pool_in_process(
    checkpoint: Path, device: str, concurrency: int, images: int, max_batch: int
) -> Row:
    encoder = ClipImageEncoder.load(str(checkpoint), device, "auto", warm_batch=max_batch)
    pixels = [
        preprocess(Image.open(ROOT / "tests" / "data" / name).convert("RGB"), encoder.spec)
        for name in PHOTOS
    ]
    pool = EncoderPool([encoder], max_batch=max_batch, max_wait_ms=5, job_timeout_s=3600)
    pool.start()
    assert pool.wait_ready(600)

    async def drive() -> float:
        count = 0

        async def caller() -> None:
            nonlocal count
            while count < images:
                count += 1
                await pool.encode(pixels[count % len(pixels)])

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started

    asyncio.run(drive())  # warm
    seconds = asyncio.run(drive())
    pool.stop()
    return Row("pool-inproc", str(encoder.dtype), concurrency, images, seconds)


def ceiling(checkpoint: Path, device: str, batches: list[int], repeats: int) -> list[Row]:
    encoder = ClipImageEncoder.load(str(checkpoint), device, "auto")
    side = encoder.spec.crop
    rows = []
    for batch in batches:
        pixels = np.random.default_rng(0).standard_normal((batch, 3, side, side), np.float32)
        encoder.encode(pixels[:1])
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            encoder.encode(pixels)
        sync(device)
        row = Row("ceiling", f"batch {batch} {encoder.dtype}", batch, batch * repeats, 0.0)
        row.seconds = time.perf_counter() - started
        rows.append(row)
        print(row, flush=True)
    return rows


def preprocess_costs() -> dict[str, float]:
    """Milliseconds per photo to decode and preprocess (what the CPU threads do)."""
    limits = ImageLimits(max_bytes=1 << 26, max_pixels=40_000_000)
    costs = {}
    for name, data in photos():
        started = time.perf_counter()
        for _ in range(10):
            image = decode_image(data, limits, param=None)
        decoded = time.perf_counter()
        for _ in range(10):
            preprocess(image, PreprocessSpec())
        done = time.perf_counter()
        size = f"{image.width}x{image.height}"
        costs[f"{name} {size} decode"] = (decoded - started) * 100
        costs[f"{name} {size} preprocess"] = (done - decoded) * 100
    return costs


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write(out: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    table = [{**asdict(row), "images_per_s": row.images_per_s} for row in rows]
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2))
    seed = next(row for row in rows if row.path == "seed")
    lines = [
        f"# Encoder benchmark ({meta['device']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} torch threads.",
        "Model: ViT-L/14 architecture, random weights. All rows measured in this one run.",
        "",
        "| path | variant | concurrency | images | seconds | images/s | x seed | min cos to seed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cos = "" if row.min_cosine_to_seed is None else f"{row.min_cosine_to_seed:.5f}"
        lines.append(
            f"| {row.path} | {row.variant} | {row.concurrency} | {row.images} | "
            f"{row.seconds:.2f} | {row.images_per_s:.3f} | "
            f"{row.images_per_s / seed.images_per_s:.2f} | {cos} |"
        )
    lines += ["", "Decode / preprocess, ms per photo (single thread):", ""]
    lines += [f"- {key}: {value:.1f} ms" for key, value in meta["preprocess_ms"].items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(out.with_suffix(".png"), rows, meta["device"])


def plot(path: Path, rows: list[Row], device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(row.variant for row in rows if row.path == "pool-http"):
        points = [row for row in rows if row.path == "pool-http" and row.variant == variant]
        axes.plot(
            [p.concurrency for p in points],
            [p.images_per_s for p in points],
            marker="o",
            label=f"pool via HTTP, {variant}",
        )
    for row in rows:
        if row.path == "pool-inproc":
            axes.plot([row.concurrency], [row.images_per_s], "s", label="pool in-process")
    seed = next(row for row in rows if row.path == "seed")
    axes.axhline(seed.images_per_s, color="grey", linestyle="--", label="seed path (fp32, 1 image)")
    best = max((row for row in rows if row.path == "ceiling"), key=lambda r: r.images_per_s)
    axes.axhline(best.images_per_s, color="black", linestyle=":", label=f"ceiling, {best.variant}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent single-image requests (N)")
    axes.set_ylabel("images / s")
    axes.set_title(f"CLIP ViT-L/14 encoder throughput ({device})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--min-requests", type=int, default=2, help="per level, at least")
    parser.add_argument("--variants", default="auto,float32,int8")
    parser.add_argument("--variant-levels", default="8", help="levels for non-auto variants")
    parser.add_argument("--seed-images", type=int, default=2)
    parser.add_argument("--ceiling-batches", default="8")
    parser.add_argument("--ceiling-repeats", type=int, default=1)
    parser.add_argument("--in-process", type=int, default=0, help="N callers; 0 = skip")
    parser.add_argument("--in-process-images", type=int, default=4096)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/encoder-cpu")
    args = parser.parse_args()

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    levels = [int(n) for n in args.concurrency.split(",")]
    variant_levels = [int(n) for n in args.variant_levels.split(",")]
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp) / "vit-l-14-random")
        seed, reference = seed_path(checkpoint, args.device, args.seed_images)
        rows.append(seed)
        print(seed, flush=True)
        for variant in args.variants.split(","):
            chosen = levels if variant == "auto" else variant_levels
            rows += pool_http(
                checkpoint,
                args.device,
                variant,
                chosen,
                args.min_requests,
                reference,
                args.max_batch,
            )
        if args.in_process:
            rows.append(
                pool_in_process(
                    checkpoint,
                    args.device,
                    args.in_process,
                    args.in_process_images,
                    args.max_batch,
                )
            )
            print(rows[-1], flush=True)
        rows += ceiling(
            checkpoint,
            args.device,
            [int(n) for n in args.ceiling_batches.split(",")],
            args.ceiling_repeats,
        )
    meta = {
        "device": args.device,
        "command": "python -m bench.encoder " + shlex.join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - started,
        "preprocess_ms": preprocess_costs(),
    }
    write(args.out, rows, meta)
    print(f"wrote {args.out}.{{json,md,png}} in {meta['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
