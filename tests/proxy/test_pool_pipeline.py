"""The encoder pool's CUDA pipeline, run on the CPU: stage / launch / collect overlapped.

The pipeline is chosen by device (CUDA); `pipeline=True` forces it here on the real test
model, so the threading, the ordering and every failure path run without a GPU: batch N+1
is staged while batch N runs, vectors match the one-batch-at-a-time path, a failure in any
step reruns the batch the careful way (split on OOM, isolate a bad image), a dead stager
restarts the worker. The image pipeline's device-decoder path runs with stand-in decoders
(nvJPEG needs a GPU), and GPU_DECODE on a CPU host serves with CPU decoding.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.clip import ClipImageEncoder, LaunchedBatch, StagedBatch
from app.engine.image_pipeline import ImagePipeline
from app.engine.pool import EncoderPool
from app.engine.preprocess import BytePixels, Pixels, preprocess_uint8
from app.errors import EncoderFailed, InvalidImage
from app.ingest.fetch import FetchPolicy, SafeFetcher
from app.ingest.sources import ImageLimits, ImageSource, SourceKind, decode_image_at_least
from tests.corpus import phone_photo
from tests.helpers import DATA, DRY_RUN, PHOTOS, cosine, data_url, image_message, parse_vector

POISON = 7  # first pixel value that makes a step misbehave


class Steps:
    """A real encoder's three steps, recorded, with a fault hook in each."""

    def __init__(self, inner: ClipImageEncoder) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.on_cpu = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def pipelined(self) -> bool:
        return True

    def record(self, step: str, size: int) -> None:
        with self.lock:
            self.calls.append((step, size))

    def encode(self, pixels: Pixels) -> np.ndarray:
        self.record("encode", len(pixels))
        self.fault("encode", pixels)
        return self.inner.encode(pixels)

    def stage(self, pixels: Pixels) -> Any:
        self.record("stage", len(pixels))
        self.fault("stage", pixels)
        return (pixels, self.inner.stage(pixels))

    def launch(self, staged: Any) -> Any:
        pixels, handle = staged
        assert isinstance(handle, StagedBatch)
        self.record("launch", handle.count)
        self.fault("launch", pixels)
        return self.inner.launch(handle)

    def collect(self, launched: Any) -> np.ndarray:
        assert isinstance(launched, LaunchedBatch)
        self.record("collect", launched.staged.count)
        return self.inner.collect(launched)

    def fault(self, step: str, pixels: Pixels) -> None:
        pass

    def warm_up(self) -> None:
        self.inner.warm_up()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.OutOfMemoryError)

    def release_memory(self) -> None:
        pass

    def fall_back_to_cpu(self) -> bool:
        if self.on_cpu:
            return False
        self.on_cpu = True
        return True


@pytest.fixture(scope="module")
def encoder(test_model_dir: Any) -> ClipImageEncoder:
    return ClipImageEncoder.load(str(test_model_dir), "cpu", "float32")


@pytest.fixture(scope="module")
def photos(encoder: ClipImageEncoder) -> list[BytePixels]:
    return [
        preprocess_uint8(Image.open(DATA / name).convert("RGB"), encoder.spec) for name in PHOTOS
    ]


@pytest.fixture
def make_pool(
    make_encoder_pool: Callable[..., EncoderPool],
) -> Callable[..., EncoderPool]:
    """Pools that pipeline whatever their device (the CUDA path, run on the CPU)."""

    def make(*encoders: Any, **options: Any) -> EncoderPool:
        options.setdefault("max_batch", 4)
        options.setdefault("max_wait_ms", 50)
        return make_encoder_pool(*encoders, pipeline=True, **options)

    return make


def poisoned(pixels: BytePixels) -> BytePixels:
    bad = pixels.copy()
    bad[0, 0, 0] = POISON
    return bad


def has_poison(pixels: Pixels) -> bool:
    return bool((pixels[:, 0, 0, 0] == POISON).any())


async def encode_all(pool: EncoderPool, images: list[BytePixels]) -> list[Any]:
    results: list[Any] = await asyncio.gather(
        *(pool.encode(p) for p in images), return_exceptions=True
    )
    return results


def test_pipelined_vectors_match_one_batch_at_a_time(
    make_pool: Callable[..., EncoderPool], encoder: ClipImageEncoder, photos: list[BytePixels]
) -> None:
    steps = Steps(encoder)
    pool = make_pool(steps)
    images = photos * 3

    results = asyncio.run(encode_all(pool, images))

    expected = encoder.encode(np.stack(images))
    for got, want in zip(results, expected, strict=True):
        assert isinstance(got, np.ndarray)
        assert cosine(got, want) >= 0.99999
    used = {step for step, _ in steps.calls}
    assert {"stage", "launch", "collect"} <= used
    assert "encode" not in used, "the pipeline fell back to the one-step path"
    staged = sum(size for step, size in steps.calls if step == "stage")
    collected = sum(size for step, size in steps.calls if step == "collect")
    assert staged == collected == len(images)


def test_the_next_batch_is_staged_while_one_runs(
    make_pool: Callable[..., EncoderPool], encoder: ClipImageEncoder, photos: list[BytePixels]
) -> None:
    class GatedLaunch(Steps):
        def __init__(self, inner: ClipImageEncoder) -> None:
            super().__init__(inner)
            self.first_launch = threading.Event()
            self.gate = threading.Event()
            self.staged_while_running = threading.Event()

        def stage(self, pixels: Pixels) -> Any:
            if self.first_launch.is_set() and not self.gate.is_set():
                self.staged_while_running.set()
            return super().stage(pixels)

        def fault(self, step: str, pixels: Pixels) -> None:
            if step == "launch" and not self.first_launch.is_set():
                self.first_launch.set()
                assert self.gate.wait(30)

    steps = GatedLaunch(encoder)
    pool = make_pool(steps, max_batch=2, max_wait_ms=0)

    async def scenario() -> list[Any]:
        first = asyncio.gather(*(pool.encode(p) for p in photos[:2]))
        assert await asyncio.to_thread(steps.first_launch.wait, 30)
        second = asyncio.gather(*(pool.encode(p) for p in photos[2:4]))
        assert await asyncio.to_thread(steps.staged_while_running.wait, 30)
        steps.gate.set()
        return [*(await first), *(await second)]

    results = asyncio.run(scenario())

    assert len(results) == 4
    assert all(isinstance(vector, np.ndarray) for vector in results)


@pytest.mark.parametrize("step", ["stage", "launch"])
def test_a_bad_image_in_any_step_fails_only_itself(
    make_pool: Callable[..., EncoderPool],
    encoder: ClipImageEncoder,
    photos: list[BytePixels],
    step: str,
) -> None:
    class Poisoned(Steps):
        def fault(self, at: str, pixels: Pixels) -> None:
            if at in (step, "encode") and has_poison(pixels):
                raise ValueError(f"model failed in {at}")

    pool = make_pool(Poisoned(encoder), max_wait_ms=200)
    images = [photos[0], poisoned(photos[1]), photos[2], photos[3]]

    results = asyncio.run(encode_all(pool, images))

    assert isinstance(results[1], EncoderFailed)
    for index in (0, 2, 3):
        assert isinstance(results[index], np.ndarray)
        assert cosine(results[index], encoder.encode(images[index][None])[0]) >= 0.99999


def test_out_of_memory_in_launch_splits_the_batch(
    make_pool: Callable[..., EncoderPool], encoder: ClipImageEncoder, photos: list[BytePixels]
) -> None:
    class OutOfMemory(Steps):
        def fault(self, at: str, pixels: Pixels) -> None:
            if len(pixels) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    steps = OutOfMemory(encoder)
    pool = make_pool(steps, max_wait_ms=200)

    results = asyncio.run(encode_all(pool, photos[:4]))

    assert all(isinstance(vector, np.ndarray) for vector in results)
    assert ("encode", 2) in steps.calls, "the batch of 4 was not split in halves"
    assert not steps.on_cpu


def test_a_dead_stager_restarts_the_worker_and_fails_only_its_batch(
    make_pool: Callable[..., EncoderPool], encoder: ClipImageEncoder, photos: list[BytePixels]
) -> None:
    class StagerKilled(BaseException):
        pass

    class Killer(Steps):
        def fault(self, at: str, pixels: Pixels) -> None:
            if at == "stage" and has_poison(pixels):
                raise StagerKilled

    pool = make_pool(Killer(encoder), max_wait_ms=0, max_batch=1)

    first = asyncio.run(encode_all(pool, [poisoned(photos[0])]))
    assert isinstance(first[0], EncoderFailed)
    assert pool.wait_ready(30)
    assert pool.restarts == 1

    after = asyncio.run(encode_all(pool, photos[:2]))
    assert all(isinstance(vector, np.ndarray) for vector in after)


def test_cpu_encoders_do_not_pipeline_unless_asked(
    encoder: ClipImageEncoder, photos: list[BytePixels]
) -> None:
    class CpuSteps(Steps):
        @property
        def pipelined(self) -> bool:
            return False

    steps = CpuSteps(encoder)
    pool = EncoderPool([steps], max_batch=4, max_wait_ms=20)
    pool.start()
    try:
        assert pool.wait_ready(30)
        results = asyncio.run(encode_all(pool, photos[:2]))
    finally:
        pool.stop()

    assert all(isinstance(vector, np.ndarray) for vector in results)
    assert {step for step, _ in steps.calls} == {"encode"}


# The image pipeline's device-decoder path, with stand-in decoders (nvJPEG needs a GPU)


def test_device_decoder_pixels_are_used_and_failures_fall_back_to_the_cpu(
    encoder: ClipImageEncoder,
) -> None:
    limits = ImageLimits(max_bytes=1 << 26, max_pixels=40_000_000)
    jpeg = phone_photo((1920, 1080))
    seen: list[tuple[int, int]] = []

    def cpu_pixels(data: bytes) -> BytePixels:
        decoded = decode_image_at_least(data, limits, encoder.spec.decode_short_side, param=None)
        return preprocess_uint8(
            decoded.image, encoder.spec, full_size=(decoded.width, decoded.height), scale=2
        )

    def working(data: bytes, width: int, height: int) -> BytePixels:
        seen.append((width, height))
        return cpu_pixels(data)

    def refusing(data: bytes, width: int, height: int) -> BytePixels:
        seen.append((width, height))
        raise RuntimeError("nvJPEG: unsupported JPEG")

    async def embed(decoder: Any, data: bytes) -> Any:
        pool = EncoderPool([encoder], max_batch=4, max_wait_ms=1)
        pool.start()
        pipeline = ImagePipeline(limits, SafeFetcher(FetchPolicy(max_bytes=limits.max_bytes)))
        pipeline.use_device_decoder(decoder)
        pipeline.attach(pool)
        try:
            return await pipeline.embed(ImageSource(SourceKind.upload, param="image", data=data))
        finally:
            pipeline.close()

    expected = encoder.encode(cpu_pixels(jpeg)[None])[0]
    for decoder in (working, refusing):
        result = asyncio.run(embed(decoder, jpeg))
        assert (result.width, result.height) == (1920, 1080)
        assert cosine(result.vector, expected) >= 0.99999
    assert seen == [(1920, 1080), (1920, 1080)]

    # A PNG never reaches the device decoder; a broken JPEG is refused by its header check.
    png = (DATA / "coffee.png").read_bytes()
    assert isinstance(asyncio.run(embed(refusing, png)).vector, np.ndarray)
    assert len(seen) == 2
    with pytest.raises(InvalidImage):
        asyncio.run(embed(working, b"\xff\xd8\xff\xe0 truncated"))
    assert len(seen) == 2


def test_gpu_decode_on_a_cpu_host_serves_with_cpu_decoding(
    start_proxy: Callable[..., Any], reference_vectors: dict[str, np.ndarray]
) -> None:
    proxy = start_proxy(gpu_decode=True, encoder_pipeline=True, encoder_cuda_graphs=True)
    body = {
        "model": "deepseek-r1",
        "messages": [image_message(data_url(DATA / "rocket.jpg", "image/jpeg"))],
    }

    response = httpx.post(
        proxy.url + "/v1/chat/completions", json=body, headers=DRY_RUN, timeout=30
    )

    assert response.status_code == 200
    content = response.json()["messages"][0]["content"]
    vector = parse_vector(content.split("<image>")[1].split("</image>")[0])
    assert cosine(vector, reference_vectors["rocket.jpg"]) >= 0.999
    assert "decode;dur=" in response.headers["server-timing"]
