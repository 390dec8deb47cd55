"""OCR cannot be held: what one dense page costs its sender and its neighbours.

Through a real proxy (uvicorn on loopback, the tiny test CLIP model, real RapidOCR, the
describe preset, two client keys): client A sends a 1400 x 1400 page of 12 px lines
(tests/helpers.py `dense_page`) with OCR_TIMEOUT_S=5; client B sends small screenshots one
after another, before (idle), during and after. Per OCR_WORKERS (1 and 2, one onnxruntime
thread each):

- B's latency: p50 / p95 idle and while the page is read, and the ratio;
- A's answer and its time; time-to-free-worker: from A's request (and from its 504) until
  `clip_proxy_words_jobs_active{kind="ocr"}` is 0 again;
- A's second request for the page: its time and whether OCR ran again.

Plus, in-process, the page read whole with no deadline (OCR_MAX_BOXES=200): the work one
image can cost at most now, on one thread.

    python -m bench.ocr_bounded    # about 2 minutes on 2 CPU cores; bench/results/ocr-bounded.*
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from app.engine.deadline import Deadline
from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import OcrModel
from app.engine.ocr_steps import drain
from app.engine.test_model import make_test_model
from app.ingest.sources import ImageLimits, decode_image
from tests.helpers import (
    DRY_RUN,
    ProxyServer,
    data_url,
    dense_page,
    image_message,
    metric_value,
    proxy_settings,
    text_png,
)
from tests.upstream_server import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEADLINE_S = 5.0
KEY_A, KEY_B = "sk-bench-page-sender", "sk-bench-neighbour"


def describe(proxy: ProxyServer, key: str, image: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [image_message(data_url(image))]},
        headers={**DRY_RUN, "Authorization": f"Bearer {key}"},
        timeout=120,
    )
    return reply.status_code, time.perf_counter() - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def run(workers: int, model_dir: Path, upstream: FakeUpstream, page: bytes) -> dict[str, Any]:
    settings = proxy_settings(
        model_dir,
        upstream.base_url,
        prompt_preset="describe",
        ocr_enabled=True,
        ocr_threads=1,
        ocr_workers=workers,
        ocr_timeout_s=DEADLINE_S,
        api_keys=f"{KEY_A},{KEY_B}",
    )
    proxy = ProxyServer(settings).start()
    counter = iter(range(100_000))

    def neighbour() -> tuple[int, float]:
        return describe(proxy, KEY_B, text_png([f"job {next(counter)} failed: exit 137"]))

    def active() -> float:
        return metric_value(proxy.url, "clip_proxy_words_jobs_active", kind="ocr")

    try:
        idle = [neighbour() for _ in range(10)]
        sender: dict[str, Any] = {}

        def send_page() -> None:
            sender["status"], sender["seconds"] = describe(proxy, KEY_A, page)
            sender["answered_at"] = time.monotonic()

        sent_at = time.monotonic()
        thread = threading.Thread(target=send_page)
        thread.start()
        during = []
        while thread.is_alive():
            during.append(neighbour())
        thread.join()
        while active() > 0:
            time.sleep(0.005)
        freed_at = time.monotonic()
        after = [neighbour() for _ in range(10)]
        readings = metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count")
        again_status, again_s = describe(proxy, KEY_A, page)
        ran_again = metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count") > readings
    finally:
        proxy.stop()
    idle_s = [s for _, s in idle + after]
    during_s = [s for _, s in during]
    return {
        "ocr_workers": workers,
        "neighbour_idle_p50_ms": 1000 * statistics.median(idle_s),
        "neighbour_idle_p95_ms": 1000 * p95(idle_s),
        "neighbour_during_p50_ms": 1000 * statistics.median(during_s),
        "neighbour_during_p95_ms": 1000 * p95(during_s),
        "neighbour_p50_ratio": statistics.median(during_s) / statistics.median(idle_s),
        "neighbour_requests_during": len(during),
        "neighbour_non_200": sum(1 for status, _ in idle + during + after if status != 200),
        "page_status": sender["status"],
        "page_seconds": sender["seconds"],
        "worker_free_after_send_s": freed_at - sent_at,
        "worker_free_after_answer_s": freed_at - sender["answered_at"],
        "second_request_status": again_status,
        "second_request_ms": 1000 * again_s,
        "second_request_ran_ocr": ran_again,
    }


def whole_page(page: bytes) -> dict[str, Any]:
    limits = ImageLimits(max_bytes=20 << 20, max_pixels=40_000_000)
    model = OcrModel.load(
        threads=1, decode=lambda data, param: decode_image(data, limits, param=param)
    )
    model.warm_up()
    started = time.perf_counter()
    text = drain(model.begin(ImageBytes(page, "bench", "bench"), Deadline(math.inf)))
    return {"seconds": time.perf_counter() - started, "lines": text.count("\n") + 1}


def main() -> None:
    page = dense_page()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
        model_dir = make_test_model(Path(tmp) / "tiny")
        for workers in (1, 2):
            rows.append(run(workers, model_dir, upstream, page))
    results = {
        "machine": platform.processor() or platform.machine(),
        "ocr_timeout_s": DEADLINE_S,
        "page_bytes": len(page),
        "rows": rows,
        "whole_page_no_deadline": whole_page(page),
        "wall_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ocr-bounded.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "ocr-bounded.md").write_text(render(results))
    print(render(results))


def render(results: dict[str, Any]) -> str:
    whole = results["whole_page_no_deadline"]
    lines = [
        "# OCR cannot be held (`python -m bench.ocr_bounded`)",
        "",
        f"Machine: {results['machine']}, 2 shared CPU cores; OCR_TIMEOUT_S="
        f"{results['ocr_timeout_s']:g}; one onnxruntime thread per OCR worker. Client A sends"
        f" a 1400 x 1400 page of 12 px lines ({results['page_bytes']} bytes); client B sends"
        " small screenshots one after another (describe preset, dry run).",
        "",
        "| OCR_WORKERS | B p50 idle | B p50 during | ratio | B p95 idle / during | B requests"
        " during | B non-200 | A's answer | worker free after A's send / after its answer |"
        " A again (OCR ran?) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['ocr_workers']} | {row['neighbour_idle_p50_ms']:.0f} ms"
            f" | {row['neighbour_during_p50_ms']:.0f} ms | {row['neighbour_p50_ratio']:.2f}x"
            f" | {row['neighbour_idle_p95_ms']:.0f} / {row['neighbour_during_p95_ms']:.0f} ms"
            f" | {row['neighbour_requests_during']} | {row['neighbour_non_200']}"
            f" | {row['page_status']} in {row['page_seconds']:.2f} s"
            f" | {row['worker_free_after_send_s']:.2f} s"
            f" / {row['worker_free_after_answer_s']:.2f} s"
            f" | {row['second_request_status']} in {row['second_request_ms']:.0f} ms"
            f" ({'yes' if row['second_request_ran_ocr'] else 'no'}) |"
        )
    lines += [
        "",
        f"The same page read whole, no deadline, in-process on one thread: {whole['seconds']:.1f} s"
        f" ({whole['lines']} lines, at most OCR_MAX_BOXES=200 boxes): what one image could"
        " hold a worker for without the deadline.",
        "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
