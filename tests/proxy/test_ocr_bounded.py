"""OCR cannot be held, through a real proxy with real RapidOCR: a dense page that would take
a minute to read costs its sender one deadline, other clients' describe requests keep their
pace while it runs, the worker is free right after the deadline, the page is not read again
on the next turn, and one tenant's OCR text is not another's cache hit."""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.describe import OCR_NOT_READ
from tests.helpers import (
    DEJAVU,
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

pytestmark = pytest.mark.skipif(not DEJAVU.exists(), reason="needs the DejaVu font")

# Slow machines may scale every deadline of this file up (CI under load).
SCALE = float(os.environ.get("CLIP_PROXY_TEST_TIMEOUT_SCALE", "1"))
DEADLINE_S = 4.0 * SCALE
KEY_A = "sk-ocr-a-" + uuid.uuid4().hex  # sends the page
KEY_B = "sk-ocr-b-" + uuid.uuid4().hex  # a neighbour with small screenshots
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    settings = proxy_settings(
        test_model_dir,
        upstream.base_url,
        prompt_preset="describe",
        ocr_enabled=True,
        ocr_threads=1,
        # One worker, the default: the page and the neighbour's images share it step by step
        # (the page's running step is preempted for a neighbour's image).
        ocr_workers=1,
        ocr_timeout_s=DEADLINE_S,
        api_keys=f"{KEY_A},{KEY_B}",
    )
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def describe(proxy: ProxyServer, key: str, image: bytes) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    reply = httpx.post(
        proxy.url + CHAT,
        json={"messages": [image_message(data_url(image))]},
        headers={**DRY_RUN, "Authorization": f"Bearer {key}"},
        timeout=60,
    )
    return reply, time.perf_counter() - started


def content(reply: httpx.Response) -> str:
    return str(reply.json()["messages"][-1]["content"])


def metric(proxy: ProxyServer, name: str, **labels: str) -> float:
    return metric_value(proxy.url, name, **labels)


def test_a_dense_page_costs_its_sender_one_deadline_and_nobody_else_anything(
    proxy: ProxyServer,
) -> None:
    page = dense_page()
    counter = iter(range(10_000))

    def neighbour() -> tuple[httpx.Response, float]:
        reply, seconds = describe(proxy, KEY_B, text_png([f"build {next(counter)} failed"]))
        assert reply.status_code == 200, reply.text
        assert "Text in the image:" in content(reply)
        return reply, seconds

    idle_before = [neighbour()[1] for _ in range(5)]
    attacker: dict[str, Any] = {}

    def send_page() -> None:
        attacker["reply"], attacker["seconds"] = describe(proxy, KEY_A, page)
        attacker["done_at"] = time.monotonic()

    sent_at = time.monotonic()
    thread = threading.Thread(target=send_page)
    thread.start()
    try:
        while metric(proxy, "clip_proxy_words_jobs_active", kind="ocr") < 1:
            assert time.monotonic() - sent_at < DEADLINE_S, "the page never began"
            time.sleep(0.01)
        during = []
        while thread.is_alive():
            during.append(neighbour()[1])
    finally:
        thread.join(timeout=60)
    while metric(proxy, "clip_proxy_words_jobs_active", kind="ocr") > 0:
        time.sleep(0.01)
    freed_after_s = time.monotonic() - sent_at

    idle_after = [neighbour()[1] for _ in range(5)]
    # The neighbour kept its pace while the page was being read (idle: the median of its
    # requests just before and just after, so a machine busy with other work counts in both).
    idle = statistics.median(idle_before + idle_after)
    assert len(during) >= 3, during
    assert statistics.median(during) <= 3 * idle, (idle, during)
    # The page's sender waited one deadline for a 504.
    reply = attacker["reply"]
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "engine_timeout"
    # ... and the worker was free within a second of it.
    assert freed_after_s <= DEADLINE_S + 1.0 * SCALE, freed_after_s
    assert metric(proxy, "clip_proxy_words_errors_total", kind="ocr", reason="stopped") == 1

    # The next turn carries the page again: not read again, said so, answered at once.
    readings = metric(proxy, "clip_proxy_ocr_duration_seconds_count")
    again, seconds = describe(proxy, KEY_A, page)
    assert again.status_code == 200, again.text
    assert OCR_NOT_READ in content(again)
    assert seconds < DEADLINE_S / 2
    assert metric(proxy, "clip_proxy_ocr_duration_seconds_count") == readings
    assert metric(proxy, "clip_proxy_words_errors_total", kind="ocr", reason="remembered") == 1
    # The failure is A's: B's copy of the page is read (and times out) on its own account.
    assert describe(proxy, KEY_B, page)[0].status_code == 504


def test_a_tenants_ocr_text_is_not_anothers_cache_hit(proxy: ProxyServer) -> None:
    shot = text_png([f"token {uuid.uuid4().hex[:8]}"])
    describe(proxy, KEY_A, shot)
    readings = metric(proxy, "clip_proxy_ocr_duration_seconds_count")
    hits = metric(proxy, "clip_proxy_words_cache_hits_total", kind="ocr", backend="memory")

    reply, _ = describe(proxy, KEY_B, shot)

    assert reply.status_code == 200
    assert metric(proxy, "clip_proxy_ocr_duration_seconds_count") == readings + 1
    assert metric(proxy, "clip_proxy_words_cache_hits_total", kind="ocr", backend="memory") == hits
    describe(proxy, KEY_B, shot)  # B's own entry now
    assert metric(proxy, "clip_proxy_ocr_duration_seconds_count") == readings + 1
