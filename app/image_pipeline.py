"""From an image source to its unit vector: read, decode, preprocess, encode.

Reading is async (a URL fetch); decoding and preprocessing are CPU work and run in a small
thread pool, so they overlap the encoder's compute and never block the event loop; the
encoder pool batches what arrives from every request.

    pipeline = ImagePipeline(pool, limits, fetcher)
    vector = await pipeline.vector(ImageSource.from_url(url, param))
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.encoder.pool import EncoderPool
from app.encoder.preprocess import Pixels, preprocess
from app.errors import Overloaded
from app.ingest import ImageLimits, ImageSource, decode_image, read_image_source
from app.safe_fetch import SafeFetcher


class ImagePipeline:
    """Turns image sources into vectors; `ready` once the encoder is loaded and warm."""

    def __init__(
        self,
        limits: ImageLimits,
        fetcher: SafeFetcher,
        *,
        preprocess_threads: int = 4,
    ) -> None:
        self._limits = limits
        self._fetcher = fetcher
        self._executor = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._pool: EncoderPool | None = None

    @property
    def ready(self) -> bool:
        """Attached, and every encoder worker alive and warm (503 from /readyz otherwise)."""
        return self._pool is not None and self._pool.ready

    @property
    def devices(self) -> list[str]:
        return self._pool.devices if self._pool is not None else []

    def attach(self, pool: EncoderPool) -> None:
        """Called once the pool's models are loaded; requests queue while it warms up."""
        old, self._pool = self._pool, pool
        if old is not None and old is not pool:
            old.stop()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.stop()

    async def vector(self, source: ImageSource) -> np.ndarray:
        pool = self._require_pool()
        data = await read_image_source(source, self._limits, self._fetcher)
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self._executor, self._prepare, data, source.param)
        return await pool.encode(pixels)

    def _prepare(self, data: bytes, param: str) -> Pixels:
        pool = self._require_pool()
        return preprocess(decode_image(data, self._limits, param=param), pool.spec)

    def _require_pool(self) -> EncoderPool:
        if self._pool is None:
            raise Overloaded("the image encoder is still loading", retry_after_s=5)
        return self._pool
