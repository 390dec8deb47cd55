"""The encoder pool under concurrency, on the CPU with the test model.

Through a real proxy: concurrent requests share batches, a poisoned image fails only its
request, a full queue answers 503 with Retry-After, /readyz follows the workers. On the pool
itself (real model copies wrapped to misbehave on cue): a model failure on one image, a
worker killed mid-run, CUDA out-of-memory, deadlines and abandoned images.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.clip import ClipImageEncoder
from app.engine.pool import EncoderPool
from app.engine.pool_jobs import BatchReport, PoolEvents
from app.engine.preprocess import Pixels, PreprocessSpec, preprocess
from app.errors import EncoderFailed, Overloaded
from tests.helpers import (
    DATA,
    PHOTOS,
    ProxyServer,
    cosine,
    data_url,
    metric_value,
    parse_vector,
    wait_for,
)
from tests.processes import scaled

POISON = 1234.5  # first pixel value that makes a wrapped encoder misbehave


# Encoders that wrap a real model copy and misbehave on cue


class WrappedEncoder:
    """A real `ClipImageEncoder`, with every call recorded; subclasses add a fault."""

    def __init__(self, inner: ClipImageEncoder) -> None:
        self.inner = inner
        self.spec: PreprocessSpec = inner.spec
        self.batch_sizes: list[int] = []
        self.on_cpu = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, pixels: Pixels) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        self.fault(pixels)
        return self.inner.encode(pixels)

    def fault(self, pixels: Pixels) -> None:
        pass

    def warm_up(self) -> None:
        self.inner.warm_up()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return self.inner.is_out_of_memory(error)

    def release_memory(self) -> None:
        self.inner.release_memory()

    def fall_back_to_cpu(self) -> bool:
        if self.on_cpu:
            return False
        self.on_cpu = True
        return True


class PoisonedInput(WrappedEncoder):
    """The model raises on any batch that holds a poisoned image."""

    def fault(self, pixels: Pixels) -> None:
        if (pixels[:, 0, 0, 0] == POISON).any():
            raise ValueError("model failed on a poisoned image")


class WorkerKilled(BaseException):
    """Stands for whatever kills a thread outright (not an Exception)."""


class Killer(WrappedEncoder):
    def fault(self, pixels: Pixels) -> None:
        if (pixels[:, 0, 0, 0] == POISON).any():
            raise WorkerKilled


class OutOfMemory(WrappedEncoder):
    """Out of CUDA memory above `fits` images; with fits=0, until moved to the CPU."""

    def __init__(self, inner: ClipImageEncoder, fits: int) -> None:
        super().__init__(inner)
        self.fits = fits

    def fault(self, pixels: Pixels) -> None:
        if len(pixels) > self.fits and not self.on_cpu:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class Gated(WrappedEncoder):
    """Blocks inside the model until the test opens the gate."""

    def __init__(self, inner: ClipImageEncoder) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fault(self, pixels: Pixels) -> None:
        self.entered.set()
        assert self.gate.wait(30)


class BrokenWarmUp(WrappedEncoder):
    def warm_up(self) -> None:
        raise RuntimeError("the device is gone")


class Recorder(PoolEvents):
    def __init__(self) -> None:
        self.reports: list[BatchReport] = []
        self.dropped_images = 0
        self.fallbacks: list[str] = []
        self.restarts: list[str] = []

    def batch(self, report: BatchReport) -> None:
        self.reports.append(report)

    def dropped(self, count: int) -> None:
        self.dropped_images += count

    def cpu_fallback(self, device: str) -> None:
        self.fallbacks.append(device)

    def worker_restarted(self, device: str) -> None:
        self.restarts.append(device)


# Fixtures


@pytest.fixture(scope="module")
def encoder(test_model_dir: Path) -> ClipImageEncoder:
    return ClipImageEncoder.load(str(test_model_dir), "cpu", "auto")


@pytest.fixture(scope="module")
def photo_pixels(encoder: ClipImageEncoder) -> dict[str, Pixels]:
    return {
        name: preprocess(Image.open(DATA / name).convert("RGB"), encoder.spec) for name in PHOTOS
    }


@pytest.fixture
def make_pool(make_encoder_pool: Callable[..., EncoderPool]) -> Callable[..., EncoderPool]:
    return make_encoder_pool


def poisoned(pixels: Pixels) -> Pixels:
    bad = pixels.copy()
    bad[0, 0, 0] = POISON
    return bad


async def encode_all(pool: EncoderPool, images: list[Pixels]) -> list[Any]:
    results: list[Any] = await asyncio.gather(
        *(pool.encode(p) for p in images), return_exceptions=True
    )
    return results


# Through the real proxy


def chat_body(url: str) -> dict[str, Any]:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": content}]}


async def post_concurrently(base_url: str, urls: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/chat/completions",
                    json=chat_body(url),
                    headers={"X-Clip-Proxy-Dry-Run": "true"},
                )
                for url in urls
            )
        )


def image_vector(response: httpx.Response) -> np.ndarray:
    content = response.json()["messages"][0]["content"]
    match = re.search(r"<image>(.*?)</image>", content)
    assert match is not None, content
    return parse_vector(match.group(1))


def test_concurrent_requests_share_batches_and_match_the_reference(
    start_proxy: Callable[..., ProxyServer], reference_vectors: dict[str, np.ndarray]
) -> None:
    proxy = start_proxy(max_batch=16, max_wait_ms=200)
    names = PHOTOS * 2
    responses = asyncio.run(post_concurrently(proxy.url, [data_url(DATA / n) for n in names]))

    assert [r.status_code for r in responses] == [200] * len(names)
    for name, response in zip(names, responses, strict=True):
        assert cosine(image_vector(response), reference_vectors[name]) >= 0.999
    images = metric_value(proxy.url, "clip_proxy_batch_size_sum")
    batches = metric_value(proxy.url, "clip_proxy_batch_size_count")
    # Each photo is sent twice; the feature cache's single flight encodes it once.
    assert images == len(PHOTOS)
    assert batches < len(PHOTOS), "every image ran alone: no batching across requests"
    assert metric_value(proxy.url, "clip_proxy_encoder_workers_ready") == 1


def test_a_poisoned_image_fails_only_its_own_request(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(max_batch=16, max_wait_ms=100)
    good = data_url(DATA / "chelsea.png")
    truncated = data_url((DATA / "coffee.png").read_bytes()[:300])
    urls = [good, good, truncated, good, "data:image/png;base64,bm90IGFuIGltYWdl", good]

    responses = asyncio.run(post_concurrently(proxy.url, urls))

    assert [r.status_code for r in responses] == [200, 200, 400, 200, 400, 200]
    assert responses[2].json()["error"]["code"] == "invalid_image_format"
    assert responses[4].json()["error"]["code"] == "invalid_image_format"
    vectors = [image_vector(r) for r in responses if r.status_code == 200]
    assert all(cosine(v, vectors[0]) >= 0.9999 for v in vectors)


def test_a_full_queue_answers_503_with_retry_after(
    start_proxy: Callable[..., ProxyServer], encoder: ClipImageEncoder
) -> None:
    proxy = start_proxy()
    gated = Gated(encoder)
    pool = EncoderPool([gated], max_batch=1, max_wait_ms=0, max_queue=1)
    pool.start()
    assert pool.wait_ready(30)
    proxy.app.state.clip_proxy.engine.attach_pool(pool)
    # Three different images: identical ones would share one encode (single flight).
    first_url, second_url, third_url = (
        data_url(DATA / name) for name in ("rocket.jpg", "chelsea.png", "coffee.png")
    )

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        first = asyncio.create_task(post_concurrently(proxy.url, [first_url]))
        await wait_for(gated.entered.is_set)  # the worker holds image 1 in the model
        second = asyncio.create_task(post_concurrently(proxy.url, [second_url]))
        await wait_for(lambda: pool.queue_depth == 1)  # image 2 fills the queue
        (refused,) = await post_concurrently(proxy.url, [third_url])
        gated.gate.set()
        return [*(await first), *(await second)], refused

    served, refused = asyncio.run(scenario())

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert [r.status_code for r in served] == [200, 200]


def test_readyz_is_503_while_a_worker_is_down(
    start_proxy: Callable[..., ProxyServer], encoder: ClipImageEncoder
) -> None:
    proxy = start_proxy()
    assert httpx.get(proxy.url + "/readyz").status_code == 200
    pool = EncoderPool([BrokenWarmUp(encoder)], max_batch=4, max_wait_ms=1)
    pool.start()
    proxy.app.state.clip_proxy.engine.attach_pool(pool)

    ready = httpx.get(proxy.url + "/readyz")

    assert ready.status_code == 503
    assert ready.headers["retry-after"]
    assert metric_value(proxy.url, "clip_proxy_encoder_workers_ready") == 0


# On the pool itself


def test_batched_vectors_equal_single_image_vectors(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
    reference_vectors: dict[str, np.ndarray],
) -> None:
    wrapped = WrappedEncoder(encoder)
    pool = make_pool(wrapped, max_batch=8, max_wait_ms=200)
    wrapped.batch_sizes.clear()  # forget the warm-up

    vectors = asyncio.run(encode_all(pool, list(photo_pixels.values())))

    assert max(wrapped.batch_sizes) > 1
    for name, vector in zip(photo_pixels, vectors, strict=True):
        alone = encoder.encode(photo_pixels[name][None])[0]
        assert cosine(vector, alone) >= 0.9999
        assert cosine(vector, reference_vectors[name]) >= 0.999


def test_a_model_failure_on_one_image_fails_only_that_image(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
) -> None:
    wrapped = PoisonedInput(encoder)
    pool = make_pool(wrapped, max_batch=8, max_wait_ms=200)
    wrapped.batch_sizes.clear()
    images = list(photo_pixels.values())
    images[2] = poisoned(images[2])

    results = asyncio.run(encode_all(pool, images))

    assert wrapped.batch_sizes[0] == len(images), "the poisoned image was not batched with others"
    assert isinstance(results[2], EncoderFailed)
    for index, result in enumerate(results):
        if index != 2:
            assert isinstance(result, np.ndarray), result


def test_a_killed_worker_is_replaced_and_later_requests_succeed(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
) -> None:
    events = Recorder()
    pool = make_pool(Killer(encoder), max_batch=4, max_wait_ms=1, events=events)
    good = photo_pixels["astronaut.png"]

    started = time.monotonic()
    (crashed,) = asyncio.run(encode_all(pool, [poisoned(good)]))
    assert isinstance(crashed, EncoderFailed)  # failed at once, not at the deadline
    assert time.monotonic() - started < 5

    assert pool.wait_ready(10)
    later = asyncio.run(encode_all(pool, [good, good]))
    assert all(isinstance(vector, np.ndarray) for vector in later)
    assert pool.restarts == 1
    assert events.restarts == [encoder.name]


def test_out_of_memory_splits_the_batch(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
) -> None:
    events = Recorder()
    wrapped = OutOfMemory(encoder, fits=2)
    # The batch closes when all the images are in (max_batch), not when a busy scheduler
    # lets the wait run out: the whole batch is tried first whatever the machine's load.
    pool = make_pool(
        wrapped,
        max_batch=len(photo_pixels),
        max_wait_ms=int(scaled(10) * 1000),
        events=events,
    )

    results = asyncio.run(encode_all(pool, list(photo_pixels.values())))

    assert all(isinstance(vector, np.ndarray) for vector in results)
    assert max(wrapped.batch_sizes) == len(photo_pixels)  # tried whole first
    assert max(report.size for report in events.reports) <= 2
    assert sum(report.size for report in events.reports) == len(photo_pixels)
    assert events.fallbacks == []


def test_out_of_memory_on_one_image_falls_back_to_cpu(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
) -> None:
    events = Recorder()
    wrapped = OutOfMemory(encoder, fits=0)
    pool = make_pool(wrapped, max_batch=8, max_wait_ms=200, events=events)

    results = asyncio.run(encode_all(pool, list(photo_pixels.values())[:2]))

    assert all(isinstance(vector, np.ndarray) for vector in results)
    assert wrapped.on_cpu
    assert events.fallbacks == [encoder.name]


def test_every_wait_has_a_deadline_and_abandoned_images_are_dropped(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photo_pixels: dict[str, Pixels],
) -> None:
    events = Recorder()
    gated = Gated(encoder)
    gated.gate.set()  # let the warm-up through
    pool = make_pool(gated, max_batch=1, max_wait_ms=0, job_timeout_s=0.3, events=events)
    gated.gate.clear()
    gated.entered.clear()
    good = photo_pixels["coffee.png"]

    results = asyncio.run(encode_all(pool, [good, good]))

    assert all(isinstance(result, Overloaded) for result in results)
    assert all(result.code == "encoder_timeout" for result in results)
    gated.gate.set()
    deadline = time.monotonic() + scaled(5)
    while events.dropped_images < 1:
        assert time.monotonic() < deadline, "the abandoned image was computed"
        time.sleep(0.01)
    assert sum(report.size for report in events.reports) <= 1
