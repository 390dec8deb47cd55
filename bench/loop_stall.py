"""The longest event-loop stall one bad request causes: a real `clip-proxy serve` (describe
preset, real RapidOCR, the tiny test CLIP model, an upstream on loopback) is probed on
`/healthz` every 20 ms from another thread while each request of a bad-input corpus is sent,
one at a time. `/healthz` is answered on the event loop, so a probe's wait past its idle
time is how long the loop stood still (issue 20: 1,000,000 messages stalled it 5.8 s).

The corpus: 1,000,000 one-word messages (30 MB of compact JSON), 500,000 text parts in one
message (13.5 MB), a ~19 MB data URL (a PNG of noise), a 40 KB header plus 1,000 small ones
(just under MAX_HEADER_BYTES), JSON nested 100,000 deep, and a dense 1400 x 1400 page of
12 px lines under the describe preset (OCR_TIMEOUT_S=5; its second turn is remembered).
Each case runs `--repeats` times; the table gives the request's status and time and the
longest and median probe wait during it, beside the idle probe wait.

    python -m bench.loop_stall            # about 2 minutes on 2 cores; bench/results/loop_stall.*
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from bench.front_door import machine, test_model
from bench.proxy import BENCH, WORK, free_port, start, wait_http
from tests.helpers import data_url, dense_page, image_message
from tests.upstream_server import FakeUpstream

RESULTS = BENCH / "results"
PROBE_EVERY_S = 0.02
CHAT = "/v1/chat/completions"
SEED = {"X-Clip-Proxy-Preset": "seed"}


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[bytes, dict[str, str]]]  # body, headers


def json_body(value: Any) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(value), {"content-type": "application/json", **SEED}


def million_messages() -> tuple[bytes, dict[str, str]]:
    return json_body({"messages": [{"role": "user", "content": "w"}] * 1_000_000})


def half_million_parts() -> tuple[bytes, dict[str, str]]:
    parts = [{"type": "text", "text": "w"}] * 500_000
    return json_body({"messages": [{"role": "user", "content": parts}]})


def large_data_url() -> tuple[bytes, dict[str, str]]:
    side = int((14_000_000 / 3) ** 0.5)  # noise does not compress: ~14 MB, ~19 MB as base64
    pixels = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return json_body({"messages": [image_message(data_url(buffer.getvalue()))]})


def huge_headers() -> tuple[bytes, dict[str, str]]:
    body, headers = json_body({"messages": [{"role": "user", "content": "hello"}]})
    headers["X-Big"] = "b" * 40_000  # with the others, under MAX_HEADER_BYTES (64 KiB)
    headers.update({f"X-Many-{index}": "v" for index in range(1_000)})
    return body, headers


def deep_nesting() -> tuple[bytes, dict[str, str]]:
    depth = 100_000
    content = b"[" * depth + b"]" * depth
    body = b'{"messages":[{"role":"user","content":' + content + b"}]}"
    return body, {"content-type": "application/json", **SEED}


def dense_ocr_page() -> tuple[bytes, dict[str, str]]:
    body, headers = json_body({"messages": [image_message(data_url(dense_page()))]})
    del headers["X-Clip-Proxy-Preset"]  # the server's preset: describe, OCR on
    return body, headers


CORPUS = [
    Case("1,000,000 messages", million_messages),
    Case("500,000 content parts", half_million_parts),
    Case("19 MB data URL", large_data_url),
    Case("40 KB header + 1,000 headers", huge_headers),
    Case("JSON nested 100,000 deep", deep_nesting),
    Case("dense 1400x1400 OCR page", dense_ocr_page),
]


@dataclass
class Prober:
    """`/healthz` every PROBE_EVERY_S on one kept-alive connection; each wait recorded."""

    url: str
    waits: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                started = time.monotonic()
                client.get(self.url + "/healthz")
                self.waits.append((started, time.monotonic() - started))
                next_at += PROBE_EVERY_S
                time.sleep(max(0.0, next_at - time.monotonic()))

    def between(self, start: float, end: float) -> list[float]:
        """Waits of probes that were in flight at any time in [start, end]."""
        return [wait for began, wait in self.waits if began <= end and began + wait >= start]

    def stop(self) -> None:
        self._stop.set()


def measure(repeats: int) -> dict[str, Any]:
    port = free_port()
    with FakeUpstream() as upstream:
        env = {
            "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
            "CLIP_PROXY_UPSTREAM_API_KEY": "sk-upstream",
            "CLIP_PROXY_CLIP_MODEL": str(test_model()),
            "CLIP_PROXY_DEVICE": "cpu",
            "CLIP_PROXY_LOG_LEVEL": "warning",
            "CLIP_PROXY_PROMPT_PRESET": "describe",
            "CLIP_PROXY_OCR_ENABLED": "true",
            "CLIP_PROXY_OCR_TIMEOUT_S": "5",
        }
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port)]
        WORK.mkdir(exist_ok=True)
        process = start(command, WORK / "loop_stall_serve.log", env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/readyz", 180, process)
            prober = Prober(url)
            thread = threading.Thread(target=prober.run, daemon=True)
            thread.start()
            time.sleep(3)  # idle probes
            idle = [wait for _, wait in prober.waits]
            rows = []
            with httpx.Client(timeout=120) as client:
                for case in CORPUS:
                    body, headers = case.build()
                    for _ in range(repeats):
                        started = time.monotonic()
                        reply = client.post(url + CHAT, content=body, headers=headers)
                        ended = time.monotonic()
                        time.sleep(0.1)  # the probe in flight at the end lands
                        during = prober.between(started, ended)
                        rows.append(
                            {
                                "case": case.name,
                                "body_bytes": len(body),
                                "status": reply.status_code,
                                "request_s": ended - started,
                                "probes": len(during),
                                "longest_probe_s": max(during, default=0.0),
                                "median_probe_s": statistics.median(during) if during else 0.0,
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
            prober.stop()
            thread.join(timeout=10)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {
        "machine": machine(),
        "probe_every_s": PROBE_EVERY_S,
        "idle_probe_median_s": statistics.median(idle),
        "idle_probe_longest_s": max(idle),
        "rows": rows,
    }


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loop_stall.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Event-loop stall per bad request",
        "",
        "`python -m bench.loop_stall`: a real `clip-proxy serve` (describe preset, RapidOCR,",
        "tiny test CLIP model, loopback upstream), `/healthz` probed every "
        f"{results['probe_every_s'] * 1000:.0f} ms",
        "on a kept-alive connection while each request is sent alone. A probe's wait past",
        "idle is the time the event loop stood still. Machine: "
        f"{results['machine']['cpus']} CPUs, load {results['machine']['load_avg'][0]:.1f}, "
        "shared with other builds and tests.",
        "",
        f"Idle probe: median {results['idle_probe_median_s'] * 1000:.1f} ms, longest "
        f"{results['idle_probe_longest_s'] * 1000:.1f} ms.",
        "",
        "| request | body | status | request time | probes | longest probe | median probe |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['case']} | {row['body_bytes'] / 1e6:.1f} MB | {row['status']} | "
            f"{row['request_s']:.2f} s | {row['probes']} | "
            f"{row['longest_probe_s'] * 1000:.0f} ms | {row['median_probe_s'] * 1000:.1f} ms |"
        )
    longest = max(results["rows"], key=lambda row: row["longest_probe_s"])
    lines += [
        "",
        f"Longest stall of any request: {longest['longest_probe_s'] * 1000:.0f} ms "
        f"({longest['case']}). Before issue 20, 1,000,000 messages held the loop 5.8 s and "
        "500,000 parts 2.8 s.",
        "",
    ]
    (RESULTS / "loop_stall.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    write(measure(args.repeats))


if __name__ == "__main__":
    main()
