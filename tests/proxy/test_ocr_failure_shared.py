"""An image whose OCR passed its deadline on one replica is not read again on another: two
real proxies sharing the real Redis at 127.0.0.1:6379, the describe preset with real
RapidOCR, and a dense page that would take a minute to read."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from app.engine.describe import OCR_NOT_READ
from tests.helpers import DRY_RUN, ProxyServer, data_url, dense_page, image_message, metric_value

SHARED_REDIS = "redis://127.0.0.1:6379/0"
DEADLINE_S = 3.0 * float(os.environ.get("CLIP_PROXY_TEST_TIMEOUT_SCALE", "1"))
CHAT = "/v1/chat/completions"


@pytest.fixture
def prefix() -> Iterator[str]:
    """Keys of this test's own, removed after it."""
    own = f"clip-proxy-test-{uuid.uuid4().hex[:12]}:"
    yield own
    client = redis.Redis.from_url(SHARED_REDIS)
    for key in client.scan_iter(match=own + "*"):
        client.delete(key)
    client.close()


def describe(proxy: ProxyServer, image: bytes) -> httpx.Response:
    return httpx.post(
        proxy.url + CHAT,
        json={"messages": [image_message(data_url(image))]},
        headers=DRY_RUN,
        timeout=120,
    )


def test_an_ocr_timeout_on_one_replica_is_remembered_by_the_other(
    start_proxy: Callable[..., ProxyServer], prefix: str
) -> None:
    settings = {
        "prompt_preset": "describe",
        "ocr_enabled": True,
        "ocr_threads": 1,
        "ocr_timeout_s": DEADLINE_S,
        "cache_url": SHARED_REDIS,
        "cache_key_prefix": prefix,
    }
    first = start_proxy(**settings)
    second = start_proxy(**settings)
    page = dense_page()

    timed_out = describe(first, page)
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["error"]["code"] == "engine_timeout"
    failed = [key for key in redis.Redis.from_url(SHARED_REDIS).scan_iter(prefix + "*:failed")]
    assert len(failed) == 1, failed

    # The next turn lands on the other replica: answered at once, the page not read again.
    readings = metric_value(second.url, "clip_proxy_ocr_duration_seconds_count")
    again = describe(second, page)
    assert again.status_code == 200, again.text
    assert OCR_NOT_READ in str(again.json()["messages"][-1]["content"])
    assert metric_value(second.url, "clip_proxy_ocr_duration_seconds_count") == readings
    remembered = {"kind": "ocr", "reason": "remembered"}
    assert metric_value(second.url, "clip_proxy_words_errors_total", **remembered) == 1
