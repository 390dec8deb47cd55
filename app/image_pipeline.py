"""From an image source to its unit vector: read, decode, preprocess, encode.

Reading is async (a URL fetch); decoding and preprocessing are CPU work and run in a small
thread pool, so they overlap the encoder's compute and never block the event loop; the
encoder pool batches what arrives from every request.

    pipeline = ImagePipeline(pool, limits, fetcher)
    vector = await pipeline.vector(ImageSource.from_url(url, param))
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.encoder.pool import EncoderPool
from app.encoder.preprocess import Pixels, preprocess
from app.errors import Overloaded
from app.ingest import ImageLimits, ImageSource, decode_image, read_image_source
from app.metrics import Metrics
from app.request_context import count_fact, note_stage
from app.safe_fetch import SafeFetcher


class ImagePipeline:
    """Turns image sources into vectors; `ready` once the encoder is loaded and warm."""

    def __init__(
        self,
        limits: ImageLimits,
        fetcher: SafeFetcher,
        *,
        preprocess_threads: int = 4,
        metrics: Metrics | None = None,
    ) -> None:
        self._limits = limits
        self._fetcher = fetcher
        self._metrics = metrics or Metrics()
        self._executor = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._pool: EncoderPool | None = None

    @property
    def ready(self) -> bool:
        return self._pool is not None

    @property
    def devices(self) -> list[str]:
        return self._pool.devices if self._pool is not None else []

    def attach(self, pool: EncoderPool) -> None:
        """Called once the pool's workers are loaded and warm."""
        self._pool = pool

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.stop()

    async def vector(self, source: ImageSource) -> np.ndarray:
        pool = self._require_pool()
        metrics = self._metrics
        metrics.images.labels(source=source.kind.value).inc()
        count_fact("images")
        started = time.perf_counter()
        data = await read_image_source(source, self._limits, self._fetcher)
        fetch_s = time.perf_counter() - started
        metrics.image_fetch.labels(source=source.kind.value).observe(fetch_s)
        note_stage("fetch", fetch_s)
        loop = asyncio.get_running_loop()
        pixels, decode_s, preprocess_s = await loop.run_in_executor(
            self._executor, self._prepare, data, source.param
        )
        metrics.image_decode.observe(decode_s)
        metrics.preprocess.observe(preprocess_s)
        note_stage("decode", decode_s)
        note_stage("preprocess", preprocess_s)
        queued = time.perf_counter()
        vector = await pool.encode(pixels)
        note_stage("encode", time.perf_counter() - queued)  # queue wait + its batch
        return vector

    def _prepare(self, data: bytes, param: str) -> tuple[Pixels, float, float]:
        """Pixels, and the seconds decoding and preprocessing took (timed here, in the
        worker thread, so the event loop's scheduling does not count)."""
        pool = self._require_pool()
        started = time.perf_counter()
        image = decode_image(data, self._limits, param=param)
        decoded = time.perf_counter()
        pixels = preprocess(image, pool.spec)
        return pixels, decoded - started, time.perf_counter() - decoded

    def _require_pool(self) -> EncoderPool:
        if self._pool is None:
            raise Overloaded("the image encoder is still loading", retry_after_s=5)
        return self._pool
