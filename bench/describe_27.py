"""Issue 27's proxy figures, today's code and this tree side by side in one run: a describe
miss for a 1080p photo without text through a real `clip-proxy serve`, the OCR stage in it,
the decodes it made, and the RSS of each proxy (OCR on).

Both servers run at once (the baseline from `git archive` of the branch point) with the
same settings: describe preset, OCR on, caches off (every request is a miss), the tiny
random CLIP checkpoint of the tests (no Hub access here; ViT-L/14's own encode time would
add the same to both sides). Requests alternate between them, one at a time, so load from
other processes falls on both alike. The photos are tests/data's (scikit-image samples)
scaled to 1920 x 1080, JPEG q90.

    python -m bench.describe_27 [--rev main] [--repeats 8]   # bench/results/describe-27.*
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.engine.test_model import make_test_model
from bench.frontend import baseline_tree, chat_body, parse_server_timing, start_serve, wait_ready
from bench.ocr import RESULTS
from bench.ocr_gate import photo

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png")
SETTINGS = {
    "CLIP_PROXY_PROMPT_PRESET": "describe",
    "CLIP_PROXY_OCR_ENABLED": "true",
    "CLIP_PROXY_OCR_WORKERS": "1",
    "CLIP_PROXY_OCR_THREADS": "1",  # one core each: the two servers share the machine
    "CLIP_PROXY_DESCRIBE_TAGS_TOP_K": "3",
}


def rss_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def decodes(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("clip_proxy_image_decodes_total{")
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", default="", help="the baseline (default: the branch point)")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    rev = (
        args.rev
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = make_test_model(Path(scratch) / "model")
        trees = {"today": baseline_tree(rev, Path(scratch) / "today"), "new": here}
        results = run(trees, checkpoint, args.repeats)
    results.update(machine=platform.platform(), baseline=rev)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "describe-27.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "describe-27.md").write_text(render(results))
    print(render(results))


def run(trees: dict[str, Path], checkpoint: Path, repeats: int) -> dict[str, Any]:
    import os

    saved = {name: os.environ.get(name) for name in SETTINGS}
    os.environ.update(SETTINGS)  # start_serve passes its environment on
    try:
        servers = {label: start_serve(tree, checkpoint) for label, tree in trees.items()}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    latency: dict[str, list[float]] = {label: [] for label in trees}
    ocr_ms: dict[str, list[float]] = {label: [] for label in trees}
    decoded: dict[str, list[float]] = {label: [] for label in trees}
    peak: dict[str, dict[str, int]] = {}
    try:
        for _, url in servers.values():
            wait_ready(url)
        idle = {label: rss_kib(process.pid) for label, (process, _) in servers.items()}
        bodies = [chat_body(photo(name, (1920, 1080))) for name in PHOTOS]
        with httpx.Client(timeout=120) as client:
            for attempt in range(repeats + 1):
                for body in bodies:
                    for label, (_, url) in servers.items():
                        before = decodes(url)
                        started = time.perf_counter()
                        reply = client.post(
                            url + "/v1/chat/completions",
                            json=body,
                            headers={"X-Clip-Proxy-Dry-Run": "true"},
                        )
                        elapsed = time.perf_counter() - started
                        reply.raise_for_status()
                        if attempt == 0:
                            continue  # warm-up: the first 1080p shape for each model
                        latency[label].append(elapsed * 1000)
                        stages = parse_server_timing(reply.headers.get("server-timing", ""))
                        ocr_ms[label].append(stages.get("ocr", float("nan")))
                        decoded[label].append(decodes(url) - before)
        peak = {label: rss_kib(process.pid) for label, (process, _) in servers.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    rows: dict[str, Any] = {}
    for label in trees:
        rows[label] = {
            "miss_p50_ms": statistics.median(latency[label]),
            "miss_ms": latency[label],
            "ocr_p50_ms": statistics.median(ocr_ms[label]),
            "decodes_per_miss": statistics.mean(decoded[label]) if decoded[label] else None,
            "rss_idle_kib": idle[label]["VmRSS"],
            "rss_after_kib": peak[label]["VmRSS"],
            "rss_peak_kib": peak[label]["VmHWM"],
        }
    return {"repeats": repeats, "photos": list(PHOTOS), "rows": rows}


def render(results: dict[str, Any]) -> str:
    today, new = results["rows"]["today"], results["rows"]["new"]

    def ratio(key: str) -> str:
        return f"{new[key] / today[key]:.2f}x"

    out = [
        "# A describe miss for a 1080p photo without text (`python -m bench.describe_27`)",
        "",
        f"Today: `{results['baseline'][:12]}` (the branch point); new: this tree. Both",
        "`clip-proxy serve` at once, describe preset, OCR on (1 worker x 1 thread each),",
        "caches off, tiny random CLIP checkpoint (its encode is ~1 ms; ViT-L/14's would add",
        f"the same to both), {len(results['photos'])} photos (tests/data, scaled to 1920 x "
        f"1080, JPEG q90) x {results['repeats']} rounds, alternating; {results['machine']}.",
        "",
        "| | today | new | new / today | target |",
        "| --- | --- | --- | --- | --- |",
        f"| describe miss p50 (ms) | {today['miss_p50_ms']:.0f} | {new['miss_p50_ms']:.0f} | "
        f"{ratio('miss_p50_ms')} | <= 0.5x |",
        f"| OCR stage p50 (Server-Timing, ms) | {today['ocr_p50_ms']:.0f} | "
        f"{new['ocr_p50_ms']:.0f} | {ratio('ocr_p50_ms')} | <= 0.3x |",
        f"| decodes per miss (/metrics) | - (no counter) | {new['decodes_per_miss']:.1f} | | 1 |",
        f"| RSS after start (MiB) | {today['rss_idle_kib'] / 1024:.0f} | "
        f"{new['rss_idle_kib'] / 1024:.0f} | {ratio('rss_idle_kib')} | |",
        f"| RSS after the run (MiB) | {today['rss_after_kib'] / 1024:.0f} | "
        f"{new['rss_after_kib'] / 1024:.0f} | {ratio('rss_after_kib')} | <= 1.10x |",
        f"| peak RSS (VmHWM, MiB) | {today['rss_peak_kib'] / 1024:.0f} | "
        f"{new['rss_peak_kib'] / 1024:.0f} | {ratio('rss_peak_kib')} | <= 1.10x |",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
