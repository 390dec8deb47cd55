"""The describe preset through a real proxy: real RapidOCR on small generated screenshots,
tags, captions from the tiny random captioner, presets chosen by setting, header and body
field, OCR shared through the real Redis, and the OCR pool's faults kept to one request."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from app.engine.deadline import Deadline
from app.engine.engine_events import MetricsWorkerEvents
from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import OcrModel
from app.engine.workers import WorkerPool
from tests.helpers import (
    DATA,
    DRY_RUN,
    ProxyServer,
    data_url,
    fresh_png,
    image_message,
    metric_value,
    text_png,
    wait_for,
)
from tests.upstream_server import FakeUpstream

SHARED_REDIS = "redis://127.0.0.1:6379/0"
CHAT = "/v1/chat/completions"
ERROR_LINE = "ERROR: connection refused on port 5432"
SCREENSHOT = text_png([ERROR_LINE, "retrying in 5 seconds"])
# OCR loads in the background with the rest: these proxies open once it is warm.
OCR = {"ocr_enabled": True, "ocr_threads": 1}


def squashed(text: str) -> str:
    """Letters and digits only, lower case: PP-OCRv4's recogniser (the proxy's before
    PP-OCRv6) dropped the spaces between English words, so tests look for the characters,
    not the word breaks."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def has_words(text: str, *words: str) -> bool:
    found = squashed(text)
    return all(squashed(word) in found for word in words)


def dry_run(
    proxy: ProxyServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        proxy.url + CHAT, json=body, headers={**DRY_RUN, **(headers or {})}, timeout=60
    )


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def content_of(reply: httpx.Response) -> str:
    messages = reply.json()["messages"]
    return str(messages[-1]["content"])


@pytest.fixture(scope="module")
def describing(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    """One proxy with OCR and tags on, describe by default (a module's worth of tests)."""
    from tests.helpers import proxy_settings

    settings = proxy_settings(
        test_model_dir,
        upstream.base_url,
        prompt_preset="describe",
        describe_tags_top_k=3,
        describe_tags_min_score=0.0,
        **OCR,
    )
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def test_words_in_a_screenshot_reach_the_upstream(
    describing: ProxyServer, upstream: FakeUpstream
) -> None:
    body = {
        "model": "deepseek-r1",
        "messages": [image_message(data_url(SCREENSHOT), "What broke?")],
    }

    reply = httpx.post(describing.url + CHAT, json=body, timeout=60)

    assert reply.status_code == 200
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    content = sent.json["messages"][0]["content"]
    assert content.startswith('What broke?\n<image index="1" width=')
    assert "Text in the image:" in content
    assert has_words(content, "ERROR:", "connection refused on port 5432", "retrying in 5")
    # Word for word, spaces included: RapidOCR's tight crops ran English words together.
    assert "connection refused on port 5432" in content, content
    assert "Looks like: " in content  # three tags from the label vocabulary
    assert content.endswith("</image>")
    assert not re.search(r"\d\.\d{6},", content)  # no vector unless INCLUDE_VECTOR
    assert metric_value(describing.url, "clip_proxy_ocr_duration_seconds_count") >= 1
    assert metric_value(describing.url, "clip_proxy_words_workers_ready", kind="ocr") == 1


def test_a_photo_without_text_says_so_and_repeats_share_one_reading(
    describing: ProxyServer,
) -> None:
    photo = data_url(fresh_png(1401))  # never read before: no cached reading to hide a run
    before = metric_value(describing.url, "clip_proxy_ocr_duration_seconds_count")
    body = {"messages": [image_message(photo), image_message(photo, "And again?")]}

    reply = dry_run(describing, body)

    assert reply.status_code == 200
    first, second = (str(m["content"]) for m in reply.json()["messages"])
    assert '<image index="1"' in first and '<image index="2"' in second
    assert first.split("\n", 1)[1].split(">", 1)[1] == second.split("\n", 1)[1].split(">", 1)[1]
    assert "Text in the image: none" in first
    # Exactly one OCR run for the two parts (single flight and cache).
    assert metric_value(describing.url, "clip_proxy_ocr_duration_seconds_count") - before == 1
    assert int(reply.headers["x-clip-proxy-prompt-chars"]) == len(
        json.dumps(reply.json()["messages"], separators=(",", ":"), ensure_ascii=False)
    )


def test_markup_in_a_screenshot_stays_text(describing: ProxyServer) -> None:
    shot = text_png(["</image> <b>&"])

    reply = dry_run(describing, {"messages": [image_message(data_url(shot))]})

    content = content_of(reply)
    assert content.count("</image>") == 1 and content.endswith("</image>")
    assert content.count("<image ") == 1
    assert "&lt;/image&gt;" in content  # what was read came through, escaped


def test_ocr_text_is_cut_at_ocr_max_chars(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe", ocr_max_chars=10, **OCR)

    content = content_of(dry_run(proxy, {"messages": [image_message(data_url(SCREENSHOT))]}))

    text = content.split("Text in the image:\n", 1)[1]
    assert re.match(r"^.{10}\n\[\.\.\. \d+ more characters\]\n</image>$", text, re.S), text


def test_presets_by_setting_header_and_body_field(
    proxy: ProxyServer, describing: ProxyServer
) -> None:
    message = image_message(data_url(DATA / "coffee.png"))
    seed = dry_run(proxy, {"messages": [message]})
    seed_content = content_of(seed)
    assert re.fullmatch(
        r"What is this\?\n<image>(-?\d\.\d{6},){767}-?\d\.\d{6}</image>", seed_content
    )

    as_header = dry_run(proxy, {"messages": [message]}, {"X-Clip-Proxy-Preset": "describe"})
    as_body = dry_run(proxy, {"messages": [message], "clip_proxy": {"preset": "describe"}})
    seed_by_header = dry_run(describing, {"messages": [message]}, {"X-Clip-Proxy-Preset": "seed"})
    seed_by_body = dry_run(
        describing,
        {"messages": [message], "clip_proxy": {"preset": "seed"}},
        {"X-Clip-Proxy-Preset": "describe"},  # the body field wins
    )

    assert seed_by_header.content == seed.content  # byte for byte
    assert seed_by_body.content == seed.content
    for reply in (as_header, as_body):
        assert reply.status_code == 200
        assert content_of(reply).startswith('What is this?\n<image index="1" width="')
        assert "clip_proxy" not in reply.json()  # never sent upstream
    # This proxy has OCR off: describe says nothing about text rather than "none".
    assert "Text in the image" not in content_of(as_header)
    seed_chars = int(seed.headers["x-clip-proxy-prompt-chars"])
    describe_chars = int(as_header.headers["x-clip-proxy-prompt-chars"])
    assert describe_chars * 20 < seed_chars


def test_a_bad_preset_is_a_400_naming_it(proxy: ProxyServer) -> None:
    message = image_message(data_url(DATA / "coffee.png"))
    by_header = dry_run(proxy, {"messages": [message]}, {"X-Clip-Proxy-Preset": "poetry"})
    by_body = dry_run(proxy, {"messages": [message], "clip_proxy": {"preset": "poetry"}})
    assert by_header.status_code == 400
    assert by_header.json()["error"]["param"] == "X-Clip-Proxy-Preset"
    assert by_body.status_code == 400
    assert "clip_proxy" in str(by_body.json()["error"]["param"])


def test_include_vector_adds_the_vector_to_describe(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe", include_vector=True)
    content = content_of(
        dry_run(proxy, {"messages": [image_message(data_url(DATA / "rocket.jpg"))]})
    )
    assert re.search(r"\nCLIP vector: (-?\d\.\d{6},){767}-?\d\.\d{6}\n</image>$", content)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis")
def test_ocr_is_shared_by_two_replicas_through_redis(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    prefix = f"clip-proxy-test-{uuid.uuid4().hex}:"
    settings = {"cache_url": SHARED_REDIS, "cache_key_prefix": prefix, "prompt_preset": "describe"}
    first = start_proxy(**settings, **OCR)
    second = start_proxy(**settings, **OCR)
    shot = text_png(["shared through redis"])
    try:
        one = dry_run(first, {"messages": [image_message(data_url(shot))]})
        assert has_words(content_of(one), "shared through redis")
        client = redis.Redis.from_url(SHARED_REDIS)
        for _ in range(250):  # the remote write lands after the answer
            if len(list(client.scan_iter(match=f"{prefix}*"))) >= 2:
                break
            threading.Event().wait(0.02)
        two = dry_run(second, {"messages": [image_message(data_url(shot))]})

        assert content_of(two) == content_of(one)
        assert metric_value(second.url, "clip_proxy_ocr_duration_seconds_count") == 0
        hits = metric_value(
            second.url, "clip_proxy_words_cache_hits_total", kind="ocr", backend="redis"
        )
        assert hits == 1
    finally:
        client = redis.Redis.from_url(SHARED_REDIS)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


class _Poisoned:
    """The real OCR model, except that it fails on images 77 pixels wide (the fault a
    malformed image would cause deep in a model)."""

    def __init__(self, inner: OcrModel, decode: Callable[[bytes, str], object]) -> None:
        self.inner = inner
        self.decode = decode
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def warm_up(self) -> None:
        self.inner.warm_up()

    def run(self, items: Sequence[ImageBytes]) -> list[str | BaseException]:
        self.entered.set()
        assert self.gate.wait(30)
        results: list[str | BaseException] = []
        for item in items:
            if getattr(self.decode(item.data, item.param), "width", 0) == 77:
                results.append(RuntimeError("poisoned"))
            else:
                results.extend(self.inner.run([item]))
        return results


def _attach_poisoned(proxy: ProxyServer, timeout_s: float = 30) -> _Poisoned:
    engine = proxy.app.state.clip_proxy.engine
    decode = engine._images.decode
    model = _Poisoned(OcrModel.load(threads=1, decode=decode), decode)
    events = MetricsWorkerEvents(proxy.app.state.clip_proxy.metrics, "ocr")
    pool: WorkerPool[ImageBytes, str] = WorkerPool(
        "ocr", lambda: model, timeout_s=timeout_s, events=events
    )
    pool.start()
    assert pool.wait_ready(30)
    engine.attach_ocr_pool(pool)
    return model


def test_a_poisoned_image_fails_only_its_own_request(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe")
    _attach_poisoned(proxy)

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            proxy.url + CHAT,
                            json={"messages": [image_message(data_url(image))]},
                            headers=DRY_RUN,
                        )
                        for image in (png_of_size(77, 40), text_png(["still fine"]))
                    )
                )
            )

    bad, good = asyncio.run(both())

    assert bad.status_code == 500
    assert bad.json()["error"]["code"] == "ocr_failed"
    assert good.status_code == 200 and has_words(content_of(good), "still fine")
    assert (
        metric_value(proxy.url, "clip_proxy_words_errors_total", kind="ocr", reason="failed") == 1
    )
    assert httpx.get(proxy.url + "/readyz").status_code == 200  # the pool lives on


def test_ocr_past_its_deadline_is_a_504_and_the_pool_recovers(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe")
    model = _attach_poisoned(proxy, timeout_s=0.5)
    model.gate.clear()  # the worker holds the first image in the model

    slow = dry_run(proxy, {"messages": [image_message(data_url(text_png(["slow"])))]})

    assert slow.status_code == 504
    assert slow.json()["error"]["code"] == "engine_timeout"
    assert (
        metric_value(proxy.url, "clip_proxy_words_errors_total", kind="ocr", reason="timeout") == 1
    )
    model.gate.set()
    again = dry_run(proxy, {"messages": [image_message(data_url(text_png(["quick again"])))]})
    assert again.status_code == 200 and has_words(content_of(again), "quick again")


class _WorkerKilled(BaseException):
    """A fault no per-image handler takes (not an `Exception`): it ends the worker thread."""


class _Deadly:
    """The real OCR model, read in steps, except that an image 77 pixels wide kills the
    worker thread reading it."""

    def __init__(self, inner: OcrModel, decode: Callable[[bytes, str], object]) -> None:
        self.inner = inner
        self.decode = decode

    def warm_up(self) -> None:
        self.inner.warm_up()

    def run(self, items: Sequence[ImageBytes]) -> Sequence[str | BaseException]:
        return self.inner.run(items)

    def begin(self, item: ImageBytes, deadline: Deadline) -> Generator[Any, None, str]:
        if getattr(self.decode(item.data, item.param), "width", 0) == 77:
            raise _WorkerKilled
        return self.inner.begin(item, deadline)


def test_a_dead_ocr_worker_fails_its_image_at_once_and_is_replaced(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe")
    engine = proxy.app.state.clip_proxy.engine
    decode = engine._images.decode
    loads: list[int] = []

    def load() -> _Deadly:
        loads.append(1)
        return _Deadly(OcrModel.load(threads=1, decode=decode), decode)

    events = MetricsWorkerEvents(proxy.app.state.clip_proxy.metrics, "ocr")
    # A deadline no answer here meets: the dead worker's image fails with the model's
    # code at once, not with `engine_timeout` after it.
    pool: WorkerPool[ImageBytes, str] = WorkerPool("ocr", load, timeout_s=120, events=events)
    pool.start()
    assert pool.wait_ready(30)
    engine.attach_ocr_pool(pool)

    killer = dry_run(proxy, {"messages": [image_message(data_url(png_of_size(77, 40)))]})

    assert killer.status_code == 500 and killer.json()["error"]["code"] == "ocr_failed"
    asyncio.run(wait_for(lambda: httpx.get(proxy.url + "/readyz").status_code == 200, 60))
    assert len(loads) == 2  # the replacement loaded its own copy of the model
    assert metric_value(proxy.url, "clip_proxy_words_worker_restarts_total", kind="ocr") == 1
    after = dry_run(proxy, {"messages": [image_message(data_url(text_png(["read after"])))]})
    assert after.status_code == 200 and has_words(content_of(after), "read after")


def test_captions_from_the_tiny_captioner_reach_the_prompt(
    start_proxy: Callable[..., ProxyServer], captioner_dir: Path
) -> None:
    proxy = start_proxy(prompt_preset="describe", caption_model=str(captioner_dir))
    photos = [data_url(DATA / name) for name in ("astronaut.png", "camera.png")]

    reply = dry_run(proxy, {"messages": [image_message(url) for url in photos]})

    assert reply.status_code == 200
    for message in reply.json()["messages"]:
        assert re.search(r"\nCaption: [^\n]+\n", str(message["content"]))
    assert metric_value(proxy.url, "clip_proxy_caption_duration_seconds_count") >= 1
    assert metric_value(proxy.url, "clip_proxy_words_workers_ready", kind="caption") == 1
    again = dry_run(proxy, {"messages": [image_message(photos[0])]})
    assert (
        metric_value(
            proxy.url, "clip_proxy_words_cache_hits_total", kind="caption", backend="memory"
        )
        == 1
    )
    assert again.status_code == 200


def test_a_full_ocr_queue_answers_503_at_once(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(prompt_preset="describe")
    engine = proxy.app.state.clip_proxy.engine
    decode = engine._images.decode
    model = _Poisoned(OcrModel.load(threads=1, decode=decode), decode)
    model.gate.clear()
    pool: WorkerPool[ImageBytes, str] = WorkerPool("ocr", lambda: model, max_queue=1)
    pool.start()
    assert pool.wait_ready(30)
    engine.attach_ocr_pool(pool)
    shots = [data_url(text_png([f"queue {n}"])) for n in range(3)]

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:

            def post(url: str) -> asyncio.Task[httpx.Response]:
                body = {"messages": [image_message(url)]}
                return asyncio.create_task(
                    client.post(proxy.url + CHAT, json=body, headers=DRY_RUN)
                )

            first = post(shots[0])
            await wait_for(model.entered.is_set)  # the worker holds image 1 in the model
            second = post(shots[1])
            await wait_for(lambda: pool.queue_depth == 1)  # image 2 fills the queue
            refused = await post(shots[2])
            model.gate.set()
            return [refused, await first, await second]

    refused, first, second = asyncio.run(scenario())

    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert [first.status_code, second.status_code] == [200, 200]


def test_readyz_waits_for_the_ocr_pool(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy()
    assert httpx.get(proxy.url + "/readyz").status_code == 200

    def broken() -> OcrModel:
        raise RuntimeError("the OCR models are missing")

    pool: WorkerPool[ImageBytes, str] = WorkerPool("ocr", broken)
    pool.start()
    assert not pool.wait_ready(10) and pool.load_failed
    proxy.app.state.clip_proxy.engine.attach_ocr_pool(pool)

    ready = httpx.get(proxy.url + "/readyz")
    described = dry_run(
        proxy,
        {"messages": [image_message(data_url(SCREENSHOT))]},
        {"X-Clip-Proxy-Preset": "describe"},
    )

    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    assert described.status_code == 503 and described.json()["error"]["code"] == "not_ready"
    assert metric_value(proxy.url, "clip_proxy_words_workers_ready", kind="ocr") == 0
