"""Front-end benchmark: decode + preprocess per image, alone, then through a real proxy.

On a generated corpus (phone photos at 1080p and 12 MP as JPEG, PNG screenshots, WEBP
photos), in one process and one run so the ratios hold on a shared machine:

1. ms per image on one thread, median of `--repeats`, for three paths:
   `processor` (full decode + CLIPImageProcessor), `before` (full decode + the v1
   resize-then-crop float preprocessing, this project before issue 17) and `now`
   (`decode_image_at_least` + `preprocess_uint8`, what the server runs);
2. images/s of `now` with 1 and 2 threads, and 2 processes (does the GIL limit threads?);
3. the cost of normalising on the CPU (NumPy, per image) against in the encoder (torch,
   per batch), the trade-off of sending uint8;
4. pixel cosine to CLIPImageProcessor, and vector cosine to the seed's reference path
   (CLIPProcessor + CLIPModel.get_image_features + L2 norm, fp32) on the test checkpoint
   and the ViT-L/14 architecture (random weights: the Hub is out of reach);
5. through a real `clip-proxy serve` (cache off, dry runs): the Server-Timing `decode` and
   `preprocess` stages of this tree against a baseline tree (`git archive` of the branch
   point), side by side.

    python -m bench.frontend --out bench/results/frontend
    python -m bench.frontend --quick --out /tmp/frontend     # smaller corpus, no ViT-L/14

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import PIL
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor
from transformers.utils import logging as transformers_logging

from app.engine.clip import ClipImageEncoder
from app.engine.preprocess import (
    PreprocessSpec,
    normalise,
    preprocess_uint8,
    resized_size,
)
from app.engine.test_model import VIT_L14_VISION, make_test_model
from app.ingest.sources import ImageLimits, decode_image, decode_image_at_least
from tests.corpus import phone_photo, screenshot
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=1 << 30)
SPEC = PreprocessSpec()
PHOTOS = ("chelsea.png", "astronaut.png", "coffee.png")


@dataclass(frozen=True)
class Sample:
    kind: str
    name: str
    data: bytes


def corpus(quick: bool) -> list[Sample]:
    photos = PHOTOS[:1] if quick else PHOTOS
    samples = []
    for seed, photo in enumerate(photos):
        for kind, size in (("jpeg-1080p", (1920, 1080)), ("jpeg-12mp", (4000, 3000))):
            name = f"jpeg {photo[:-4]} {size[0]}x{size[1]}"
            samples.append(Sample(kind, name, phone_photo(size, photo=photo, seed=seed)))
    sizes = [(1920, 1080)] if quick else [(1920, 1080), (2560, 1440), (2880, 1800)]
    for seed, (width, height) in enumerate(sizes):
        data = screenshot((width, height), seed=seed)
        samples.append(Sample("png-screenshot", f"png screenshot {width}x{height}", data))
    webp = [((1920, 1080), PHOTOS[0])] if quick else [((1920, 1080), p) for p in PHOTOS[:2]]
    webp += [((3000, 2000), PHOTOS[2])]
    for seed, (size, photo) in enumerate(webp):
        data = phone_photo(size, photo=photo, fmt="WEBP", seed=seed)
        samples.append(Sample("webp", f"webp {photo[:-4]} {size[0]}x{size[1]}", data))
    return sorted(samples, key=lambda sample: sample.kind)


# The three paths, each bytes -> pixels the model takes

PROCESSOR = CLIPImageProcessorPil()


def processor_path(data: bytes) -> np.ndarray:
    image = decode_image(data, LIMITS, param=None)
    pixels: np.ndarray = PROCESSOR(images=image, return_tensors="np")["pixel_values"][0]
    return pixels


def before_path(data: bytes) -> np.ndarray:
    """clip-proxy before issue 17: full decode, resize the whole picture, crop, normalise."""
    image = decode_image(data, LIMITS, param=None)
    width, height = resized_size(image.width, image.height, SPEC.size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top, left = (height - SPEC.crop) // 2, (width - SPEC.crop) // 2
    cropped = resized.crop((left, top, left + SPEC.crop, top + SPEC.crop))
    scaled = np.asarray(cropped, dtype=np.float32) * np.float32(1 / 255)
    mean = np.asarray(SPEC.mean, dtype=np.float32)
    std = np.asarray(SPEC.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def now_path(data: bytes) -> np.ndarray:
    decoded = decode_image_at_least(data, LIMITS, SPEC.decode_short_side, param=None)
    return preprocess_uint8(
        decoded.image, SPEC, full_size=(decoded.width, decoded.height), scale=decoded.scale
    )


PATHS: dict[str, Callable[[bytes], np.ndarray]] = {
    "processor": processor_path,
    "before": before_path,
    "now": now_path,
}


def median_ms(path: Callable[[bytes], Any], data: bytes, repeats: int) -> float:
    return timed_ms(path, data, repeats)[0]


def timed_ms(path: Callable[[bytes], Any], data: bytes, repeats: int) -> tuple[float, float, float]:
    """(median wall, fastest wall, median CPU) ms of `repeats` calls.

    The CPU time is this thread's (`time.thread_time`): the decoders run in the calling
    thread, so it is the cost per image per core, and time spent waiting for a core that
    other jobs hold does not count in it.
    """
    path(data)  # warm: first-call imports and allocations
    walls, cpus = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        path(data)
        walls.append(time.perf_counter() - started)
        cpus.append(time.thread_time() - started_cpu)
    return (
        statistics.median(walls) * 1000,
        min(walls) * 1000,
        statistics.median(cpus) * 1000,
    )


def per_image(samples: list[Sample], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        row: dict[str, Any] = {"kind": sample.kind, "name": sample.name, "bytes": len(sample.data)}
        for label, path in PATHS.items():
            row[f"{label}_ms"], row[f"{label}_min_ms"], row[f"{label}_cpu_ms"] = timed_ms(
                path, sample.data, repeats
            )
        reference = processor_path(sample.data)
        ours = normalise(now_path(sample.data), SPEC)
        row["pixel_cosine"] = cosine(ours, reference)
        rows.append(row)
        print(
            f"  {sample.name:28s} "
            + "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k.endswith(("_ms", "cosine"))),
            flush=True,
        )
    return rows


def _now_in_worker(data: bytes) -> int:
    return int(now_path(data).shape[0])


def throughput(samples: list[Sample], seconds: float) -> list[dict[str, Any]]:
    """images/s of the server's path with N threads or processes, over the whole corpus."""
    rows = []
    setups: list[tuple[str, int, Callable[[], Executor]]] = [
        ("threads", 1, lambda: ThreadPoolExecutor(1)),
        ("threads", 2, lambda: ThreadPoolExecutor(2)),
        ("processes", 2, lambda: ProcessPoolExecutor(2)),
    ]
    blobs = [sample.data for sample in samples]
    for kind, workers, make in setups:
        with make() as executor:
            list(executor.map(_now_in_worker, blobs))  # warm every worker
            done = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                done += len(list(executor.map(_now_in_worker, blobs)))
            elapsed = time.perf_counter() - started
        rows.append({"executor": kind, "workers": workers, "images_per_s": done / elapsed})
        print(f"  {kind} x{workers}: {done / elapsed:.1f} images/s", flush=True)
    return rows


def normalise_costs(encoder: ClipImageEncoder, batch: int = 32) -> dict[str, float]:
    """Per image: NumPy normalise of each image vs the encoder's torch normalise per batch."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (batch, 3, SPEC.crop, SPEC.crop), dtype=np.uint8)
    numpy_ms = median_ms(lambda _: np.stack([normalise(image, SPEC) for image in raw]), b"", 9)
    torch_ms = median_ms(lambda _: encoder._model_input(torch.from_numpy(raw)).numpy(), b"", 9)
    return {"numpy_per_image_ms": numpy_ms / batch, "torch_batch_per_image_ms": torch_ms / batch}


def vector_cosines(checkpoint: Path, samples: list[Sample]) -> dict[str, Any]:
    """Ours (front end + vision tower, fp32) against the seed's reference path, per image,
    and, for scale, how far apart the reference vectors of different images are (random
    weights map every picture to nearby vectors: a cosine is only telling against that)."""
    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = CLIPProcessor.from_pretrained(checkpoint)
    encoder = ClipImageEncoder.load(str(checkpoint), "cpu", "float32")
    per_image = {}
    references = []
    for sample in samples:
        image = decode_image(sample.data, LIMITS, param=None)
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)[0]
        reference = (features / features.norm()).numpy()
        references.append(reference)
        ours = encoder.encode(now_path(sample.data)[None])[0]
        per_image[sample.name] = cosine(ours, reference)
    between = [cosine(a, b) for i, a in enumerate(references) for b in references[i + 1 :]]
    return {
        "per_image": per_image,
        "min": min(per_image.values()),
        "between_images_max": max(between) if between else None,
    }


# Through a real proxy: this tree against a baseline tree


def baseline_tree(rev: str, into: Path) -> Path:
    """`git archive` of `rev` (the branch point by default): the code before this work."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_serve(tree: Path, checkpoint: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`clip-proxy serve` from `tree`: CPU, cache off, one preprocessing thread."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "CLIP_PROXY_CLIP_MODEL": str(checkpoint),
        "CLIP_PROXY_DEVICE": "cpu",
        "CLIP_PROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",  # dry runs send nothing
        "CLIP_PROXY_CACHE_MEMORY_BYTES": "0",  # every request decodes its image
        "CLIP_PROXY_PREPROCESS_THREADS": "1",
        "CLIP_PROXY_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-c", "from app.cli import main; raise SystemExit(main())"]
    process = subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def proxy_stages(
    trees: dict[str, Path], checkpoint: Path, samples: list[Sample], repeats: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Median Server-Timing decode and preprocess (ms) per tree and kind.

    Every tree's server runs at once and the requests alternate between them, one at a
    time, so a burst of load from other jobs falls on both alike.
    """
    servers = {label: start_serve(tree, checkpoint) for label, tree in trees.items()}
    stages: dict[str, dict[str, dict[str, list[float]]]] = {label: {} for label in trees}
    try:
        for _, url in servers.values():
            wait_ready(url)
        clients = {
            label: httpx.Client(base_url=url, timeout=60) for label, (_, url) in servers.items()
        }
        for sample in samples:
            body = chat_body(sample.data)
            for attempt in range(repeats + 1):
                for label, client in clients.items():
                    response = client.post(
                        "/v1/chat/completions", json=body, headers={"X-Clip-Proxy-Dry-Run": "true"}
                    )
                    response.raise_for_status()
                    if attempt == 0:
                        continue  # warm
                    timing = parse_server_timing(response.headers["server-timing"])
                    kind = stages[label].setdefault(sample.kind, {"decode": [], "preprocess": []})
                    for stage in ("decode", "preprocess"):
                        kind[stage].append(timing.get(stage, 0.0))
        for client in clients.values():
            client.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    return {
        label: {
            kind: {stage: statistics.median(values) for stage, values in by_stage.items()}
            for kind, by_stage in by_kind.items()
        }
        for label, by_kind in stages.items()
    }


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the proxy at {url} did not become ready")


def chat_body(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as opened:
        mime = Image.MIME[str(opened.format)]
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": content}]}


def parse_server_timing(header: str) -> dict[str, float]:
    return {
        match.group(1): float(match.group(2))
        for match in re.finditer(r"(\w+);dur=([\d.]+)", header)
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


# Report


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        kinds.setdefault(row["kind"], []).append(row)
    summary = []
    for kind, group in kinds.items():
        entry: dict[str, Any] = {"kind": kind, "images": len(group)}
        for label in PATHS:
            entry[f"{label}_ms"] = statistics.mean(row[f"{label}_ms"] for row in group)
            entry[f"{label}_min_ms"] = statistics.mean(row[f"{label}_min_ms"] for row in group)
            entry[f"{label}_cpu_ms"] = statistics.mean(row[f"{label}_cpu_ms"] for row in group)
        entry["min_pixel_cosine"] = min(row["pixel_cosine"] for row in group)
        summary.append(entry)
    return summary


def write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    meta = result["meta"]
    lines = [
        "# Front end: decode + preprocess per image (issue 17)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; {meta['cpus']} CPUs, **shared with other engineers' "
        "jobs while this ran**: absolute times are noisy, the paths were measured side by "
        "side in one run, so compare ratios.",
        "",
        "## ms per image per core (CPU time of the thread)",
        "",
        "Mean over the images of a kind of each image's median CPU time: what one image "
        "costs one core, not counting the time other jobs held it.",
        "",
        "| kind | images | CLIPImageProcessor | before (v1) | now | now vs before | "
        "pixel cosine to processor (min) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['kind']} | {row['images']} | {row['processor_cpu_ms']:.1f} | "
            f"{row['before_cpu_ms']:.1f} | **{row['now_cpu_ms']:.1f}** | "
            f"{row['before_cpu_ms'] / row['now_cpu_ms']:.1f}x | {row['min_pixel_cosine']:.6f} |"
        )
    lines += [
        "",
        "## ms per image, wall clock, one thread",
        "",
        "Median (fastest run in brackets), same runs as above.",
        "",
        "| kind | CLIPImageProcessor | before (v1) | now | now vs before |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['kind']} | {row['processor_ms']:.1f} ({row['processor_min_ms']:.1f}) | "
            f"{row['before_ms']:.1f} ({row['before_min_ms']:.1f}) | {row['now_ms']:.1f} "
            f"({row['now_min_ms']:.1f}) | {row['before_ms'] / row['now_ms']:.1f}x |"
        )
    lines += [
        "",
        "Per image (CPU ms):",
        "",
        "| image | bytes | processor | before | now | pixel cosine |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["per_image"]:
        lines.append(
            f"| {row['name']} | {row['bytes']:,} | {row['processor_cpu_ms']:.1f} | "
            f"{row['before_cpu_ms']:.1f} | {row['now_cpu_ms']:.1f} | {row['pixel_cosine']:.6f} |"
        )
    lines += [
        "",
        "## images/s of the server's path over the whole corpus",
        "",
        "| executor | workers | images/s |",
        "| --- | --- | --- |",
    ]
    for row in result["throughput"]:
        lines.append(f"| {row['executor']} | {row['workers']} | {row['images_per_s']:.1f} |")
    norm = result["normalise"]
    lines += [
        "",
        "## Normalising: on the CPU per image, or in the encoder per batch (torch, CPU here)",
        "",
        f"NumPy per image: {norm['numpy_per_image_ms']:.3f} ms; torch on a batch of 32: "
        f"{norm['torch_batch_per_image_ms']:.3f} ms per image.",
        "",
        "## Vector cosine to the seed's reference path (fp32, CPU)",
        "",
        "`1 - cosine` (smaller is closer). For scale, the last column is the closest pair of "
        "*different* images under the same model: random weights put every picture near the "
        "others, so our distance to the reference should be far below that one.",
        "",
        "| checkpoint | worst 1 - cosine to the seed | per image | closest different images, "
        "1 - cosine |",
        "| --- | --- | --- | --- |",
    ]
    for checkpoint, found in result["vector_cosine"].items():
        detail = ", ".join(f"{name} {1 - value:.1e}" for name, value in found["per_image"].items())
        between = found["between_images_max"]
        scale = f"{1 - between:.1e}" if between is not None else "-"
        lines.append(f"| {checkpoint} | {1 - found['min']:.1e} | {detail} | {scale} |")
    if result.get("proxy"):
        proxy = result["proxy"]
        lines += [
            "",
            "## Through a real proxy: Server-Timing medians (ms), baseline "
            f"`{proxy['baseline_rev']}` vs this tree",
            "",
            "Two `clip-proxy serve` processes (baseline tree, this tree) side by side: test "
            "checkpoint, CPU, cache off, 1 preprocessing thread; "
            f"{proxy['repeats']} dry-run chat requests per image to each, alternating, one "
            "at a time.",
            "",
            "| kind | decode before | decode now | preprocess before | preprocess now | "
            "decode+preprocess gain |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for kind, now in proxy["now"].items():
            before = proxy["before"][kind]
            total_before = before["decode"] + before["preprocess"]
            total_now = now["decode"] + now["preprocess"]
            lines.append(
                f"| {kind} | {before['decode']:.1f} | {now['decode']:.1f} | "
                f"{before['preprocess']:.1f} | {now['preprocess']:.1f} | "
                f"{total_before / total_now:.1f}x |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frontend")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=6.0, help="per throughput setting")
    parser.add_argument("--proxy-repeats", type=int, default=5)
    parser.add_argument("--baseline-rev", default="", help="default: merge-base with main")
    parser.add_argument("--quick", action="store_true", help="small corpus, no ViT-L/14")
    parser.add_argument("--no-proxy", action="store_true")
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(1)  # one core per image path, as a preprocessing thread has

    print("corpus...", flush=True)
    samples = corpus(args.quick)
    print("per image, one thread:", flush=True)
    rows = per_image(samples, args.repeats)
    print("throughput:", flush=True)
    rates = throughput(samples, args.seconds)
    result: dict[str, Any] = {
        "per_image": rows,
        "summary": summarise(rows),
        "throughput": rates,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {"test checkpoint": make_test_model(Path(tmp) / "test")}
        if not args.quick:
            checkpoints["ViT-L/14 (random weights)"] = make_test_model(
                Path(tmp) / "vit-l14", vision=VIT_L14_VISION
            )
        encoder = ClipImageEncoder.load(str(checkpoints["test checkpoint"]), "cpu", "float32")
        result["normalise"] = normalise_costs(encoder)
        print("vector cosines...", flush=True)
        one_per_kind = list({sample.kind: sample for sample in samples}.values())
        result["vector_cosine"] = {
            label: vector_cosines(path, samples if label == "test checkpoint" else one_per_kind)
            for label, path in checkpoints.items()
        }
        if not args.no_proxy:
            rev = (
                args.baseline_rev
                or subprocess.run(
                    ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
            )
            print(f"proxy stages, baseline {rev[:10]} then this tree...", flush=True)
            base = baseline_tree(rev, Path(tmp) / "baseline")
            proxy_samples = one_per_kind if args.quick else samples
            measured = proxy_stages(
                {"before": base, "now": ROOT},
                checkpoints["test checkpoint"],
                proxy_samples,
                args.proxy_repeats,
            )
            before, now = measured["before"], measured["now"]
            result["proxy"] = {
                "baseline_rev": rev[:10],
                "repeats": args.proxy_repeats,
                "before": before,
                "now": now,
            }
    result["meta"] = {
        "command": "python -m bench.frontend " + " ".join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "torch": torch.__version__,
    }
    write(args.out, result)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
