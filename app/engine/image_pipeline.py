"""From an image source to its unit vector: read, decode, preprocess, encode.

Reading is async (a URL fetch); decoding and preprocessing are CPU work and run in a small
thread pool, so they overlap the encoder's compute and never block the event loop; the
encoder pool batches what arrives from every request.

    pipeline = ImagePipeline(limits, fetcher, cache=cache, metrics=metrics)
    pipeline.attach(pool)                # once the encoder is loaded
    image = await pipeline.embed(ImageSource.from_url(url, param))   # .vector, .sha256, ...

With a cache (`app.engine.cache`), the bytes' SHA-256 is looked up before any decoding, and
identical images in flight at once are decoded and encoded once.

Decoding asks only for the pixels the model needs (a JPEG comes out of libjpeg already
scaled down, `decode_image_at_least`), and preprocessing hands uint8 pixels to the pool,
which normalises them on its device. With a device decoder (`use_device_decoder`: nvJPEG
on a GPU host), JPEGs are decoded there, and any image it fails on is decoded here.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from PIL import Image

from app.engine.cache import EmbeddingCache, ImageEmbedding
from app.engine.pool import EncoderPool
from app.engine.preprocess import BytePixels, Pixels, preprocess_uint8
from app.engine.shared_decode import SharedDecode
from app.errors import EngineNotReady, ProxyError
from app.ingest.fetch import SafeFetcher
from app.ingest.sources import (
    DecodedImage,
    ImageLimits,
    ImageSource,
    decode_image,
    decode_image_at_least,
    probe_image,
    read_image_source,
)
from app.metrics import Metrics
from app.observability.request_context import count_fact, note_stage

logger = logging.getLogger(__name__)

_HASH_IN_THREAD_BYTES = 256 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"

# (bytes, upright width, upright height) -> CHW uint8 crop; raises on what it cannot decode.
DeviceDecoder = Callable[[bytes, int, int], BytePixels]


@dataclass(frozen=True)
class ImageBytes:
    """An image's bytes as read (not yet decoded), their SHA-256, and the request field
    that named it (for errors). The OCR and caption pools take these too."""

    data: bytes
    sha256: str
    param: str
    # The request's one full decode, when several consumers share it (`shared_decode.py`).
    shared: SharedDecode | None = field(default=None, compare=False, repr=False)

    def decode_with(self, decode: Callable[[bytes, str], Image.Image]) -> Image.Image:
        """The picture: the request's shared decode when there is one, else `decode`'s."""
        if self.shared is not None:
            return self.shared.get()
        return decode(self.data, self.param)

    def sharing(self, decode: Callable[[bytes, str], Image.Image]) -> ImageBytes:
        """These bytes with one decode (by `decode`) for all their consumers."""
        return replace(self, shared=SharedDecode(lambda: decode(self.data, self.param)))


@dataclass(frozen=True)
class _Prepared:
    pixels: Pixels
    width: int
    height: int
    decode_s: float
    preprocess_s: float


class ImagePipeline:
    """Turns image sources into vectors; `ready` once the encoder is loaded and warm."""

    def __init__(
        self,
        limits: ImageLimits,
        fetcher: SafeFetcher,
        *,
        preprocess_threads: int = 4,
        cache: EmbeddingCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cache = cache
        self._limits = limits
        self._fetcher = fetcher
        self._metrics = metrics or Metrics()
        self._executor = ThreadPoolExecutor(preprocess_threads, thread_name_prefix="preprocess")
        self._pool: EncoderPool | None = None
        self._device_decoder: DeviceDecoder | None = None

    @property
    def ready(self) -> bool:
        """Attached, and every encoder worker alive and warm (503 from /readyz otherwise)."""
        return self._pool is not None and self._pool.ready

    @property
    def devices(self) -> list[str]:
        return self._pool.devices if self._pool is not None else []

    def wait_ready(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` for the attached pool's workers to be warm."""
        pool = self._pool
        if pool is None:
            time.sleep(timeout_s)
            return False
        return pool.wait_ready(timeout_s)

    @property
    def dim(self) -> int | None:
        """The vector's width (the model's projection dim); None until the model is loaded."""
        return self._pool.dim if self._pool is not None else None

    @property
    def queue_depth(self) -> int:
        return self._pool.queue_depth if self._pool is not None else 0

    @property
    def workers_ready(self) -> int:
        return self._pool.workers_ready if self._pool is not None else 0

    def attach(self, pool: EncoderPool) -> None:
        """Called once the pool's models are loaded; requests queue while it warms up."""
        old, self._pool = self._pool, pool
        if old is not None and old is not pool:
            old.stop()

    def use_device_decoder(self, decoder: DeviceDecoder | None) -> None:
        """Decode JPEGs with `decoder` (GPU), falling back to the CPU image by image."""
        self._device_decoder = decoder

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.stop()

    async def embed(self, source: ImageSource) -> ImageEmbedding:
        """The image's vector with its SHA-256 and size, from the cache when it holds it."""
        return await self.embed_bytes(await self.read(source))

    async def read(self, source: ImageSource) -> ImageBytes:
        """The image's bytes (fetched, decoded from base64, or uploaded) and their SHA-256."""
        self._require_pool()
        self._metrics.images.labels(source=source.kind.value).inc()
        count_fact("images")
        started = time.perf_counter()
        data = await read_image_source(source, self._limits, self._fetcher)
        fetch_s = time.perf_counter() - started
        self._metrics.image_fetch.labels(source=source.kind.value).observe(fetch_s)
        note_stage("fetch", fetch_s)
        return ImageBytes(data, await self._sha256(data), source.param)

    async def embed_bytes(self, image: ImageBytes) -> ImageEmbedding:
        if self.cache is None:
            return await self._compute(image)
        try:
            return await self.cache.get_or_compute(image.sha256, lambda: self._compute(image))
        except ProxyError as exc:
            own = own_param(exc, image.param)
            if own is exc:
                raise
            raise own from exc

    async def _compute(self, image: ImageBytes) -> ImageEmbedding:
        pool = self._require_pool()
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._executor, self._prepare, image)
        self._metrics.image_decode.observe(prepared.decode_s)
        self._metrics.preprocess.observe(prepared.preprocess_s)
        note_stage("decode", prepared.decode_s)
        note_stage("preprocess", prepared.preprocess_s)
        queued = time.perf_counter()
        vector = await pool.encode(prepared.pixels)
        note_stage("encode", time.perf_counter() - queued)  # queue wait + its batch
        return ImageEmbedding(
            sha256=image.sha256, vector=vector, width=prepared.width, height=prepared.height
        )

    async def _sha256(self, data: bytes) -> str:
        if len(data) < _HASH_IN_THREAD_BYTES:
            return hashlib.sha256(data).hexdigest()
        # hashlib releases the GIL on big buffers: a 20 MB image hashes off the event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: hashlib.sha256(data).hexdigest())

    def _prepare(self, image: ImageBytes) -> _Prepared:
        """Pixels and size, and the seconds decoding and preprocessing took (timed here, in
        the worker thread, so the event loop's scheduling does not count)."""
        pool = self._require_pool()
        data, param = image.data, image.param
        started = time.perf_counter()
        if image.shared is not None:
            # OCR or the captioner need the full picture anyway: reduce that one decode
            # rather than decode the bytes a second time at a reduced scale.
            picture = image.shared.get()
            decoded = DecodedImage(picture, picture.width, picture.height)
        elif self._device_decoder is not None and data.startswith(_JPEG_MAGIC):
            on_device = self._prepare_on_device(self._device_decoder, data, param, started)
            if on_device is not None:
                return on_device
            decoded = self._decode_at_least(data, param, pool.spec.decode_short_side)
        else:
            decoded = self._decode_at_least(data, param, pool.spec.decode_short_side)
        decoded_at = time.perf_counter()
        pixels = preprocess_uint8(
            decoded.image, pool.spec, full_size=(decoded.width, decoded.height), scale=decoded.scale
        )
        return _Prepared(
            pixels=pixels,
            width=decoded.width,
            height=decoded.height,
            decode_s=decoded_at - started,
            preprocess_s=time.perf_counter() - decoded_at,
        )

    def _decode_at_least(self, data: bytes, param: str, short_side: int) -> DecodedImage:
        self._metrics.image_decodes.labels(scale="reduced").inc()
        return decode_image_at_least(data, self._limits, short_side, param=param)

    def _prepare_on_device(
        self, decoder: DeviceDecoder, data: bytes, param: str, started: float
    ) -> _Prepared | None:
        """Decode, resize and crop on the device; None sends the image to the CPU path."""
        header = probe_image(data, self._limits, param=param)  # limits hold on either path
        self._metrics.image_decodes.labels(scale="device").inc()
        try:
            pixels = decoder(data, header.width, header.height)
        except Exception as exc:
            # nvJPEG refuses some JPEGs (CMYK, rare subsamplings): the CPU decodes those,
            # and tells the client when the image itself is broken.
            logger.info("GPU decode failed; decoding on the CPU", extra={"error": repr(exc)})
            return None
        # Decode, resize and crop are one device call: it all counts as decoding.
        return _Prepared(
            pixels=pixels,
            width=header.width,
            height=header.height,
            decode_s=time.perf_counter() - started,
            preprocess_s=0.0,
        )

    def decode(self, data: bytes, param: str) -> Image.Image:
        """Checked and decoded at full size (for the OCR and caption workers, in their
        threads, and for a request's shared decode)."""
        self._metrics.image_decodes.labels(scale="full").inc()
        return decode_image(data, self._limits, param=param)

    def _require_pool(self) -> EncoderPool:
        if self._pool is None:
            raise EngineNotReady("image encoder")
        return self._pool


def own_param(exc: ProxyError, param: str) -> ProxyError:
    """A request that joined another's flight names its own image in the error."""
    if exc.param is None or exc.param == param:
        return exc
    own = copy.copy(exc)
    own.param = param
    return own
