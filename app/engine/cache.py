"""A content-addressed cache of image vectors, with single flight in front of the encoder.

Chat clients resend the whole history every turn, so the same photo comes back again and
again; its vector is computed once. The key is the SHA-256 of the image bytes inside a
namespace that names what made the vector (model name and weights, preprocessing version,
dtype), so a new checkpoint or a preprocessing change never reads an old vector:

    {prefix}{namespace}:{sha256 of the bytes}   ->   width, height (uint32) + float32 vector

Backends (`cache_backends.py`) are tried in order: an in-process LRU bounded in bytes, then
(with `CLIP_PROXY_CACHE_URL=redis://...`) a Redis shared by every replica, with a TTL. A backend
that fails or is slow is skipped, counted and logged; the vector is then computed, so the
cache never fails a request. Concurrent requests for one key share one computation.

Nothing read back is trusted: a value is used only if it is a vector this model could have
made (its dimension, every value finite, norm within 1e-3 of 1). Anything else (a bit flip,
another writer, a hand edit) is counted as an error, recomputed and overwritten.

    cache = EmbeddingCache([MemoryBackend(256 * MiB)], metrics)
    cache.bind(namespace, dim=768)         # once the model is loaded
    image = await cache.get_or_compute(sha256_hex, compute)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from app.engine.cache_backends import (
    CacheBackend,
    CacheCorrupt,
    CacheSkipped,
    CacheUnavailable,
    MemoryBackend,
)
from app.engine.cache_scope import SHARED, CacheScope
from app.metrics import Metrics

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # width, height

T = TypeVar("T")


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's unit vector and the facts a prompt template may show about it."""

    sha256: str
    vector: npt.NDArray[np.float32]
    width: int
    height: int

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.width, self.height) + self.vector.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, sha256: str, value: bytes) -> ImageEmbedding:
        if len(value) <= _HEADER.size or (len(value) - _HEADER.size) % 4:
            raise CacheCorrupt(f"a cached value of {len(value)} bytes is malformed")
        width, height = _HEADER.unpack_from(value)
        vector = np.frombuffer(value, dtype="<f4", offset=_HEADER.size).astype(np.float32)
        return cls(sha256=sha256, vector=vector, width=width, height=height)


# The largest OCR text or caption taken from a cache (bytes of UTF-8).
MAX_WORDS_BYTES = 256 * 1024


def namespace_of(model_identity: str, preprocess_version: int, dtype: str) -> str:
    """A short id for everything besides the image that decides the vector."""
    text = f"{model_identity}|preprocess={preprocess_version}|dtype={dtype}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# How far from 1 a stored unit vector's norm may be (float32 round-off is ~1e-7).
_NORM_TOLERANCE = 1e-3


def check_embedding(embedding: ImageEmbedding, dim: int | None) -> None:
    """Raise `CacheCorrupt` unless `embedding` could be this model's output."""
    vector = embedding.vector
    if dim is not None and vector.shape != (dim,):
        raise CacheCorrupt(f"a cached vector has {vector.size} values, the model makes {dim}")
    if embedding.width < 1 or embedding.height < 1:
        raise CacheCorrupt(f"a cached image size of {embedding.width}x{embedding.height}")
    if not np.isfinite(vector).all():
        raise CacheCorrupt("a cached vector holds values that are not finite")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if abs(norm - 1.0) > _NORM_TOLERANCE:
        raise CacheCorrupt(f"a cached vector has norm {norm:.6g}, not 1")


Compute = Callable[[], Awaitable[T]]


def _bytes_held_by(backend: MemoryBackend) -> Callable[[], float]:
    return lambda: float(backend.bytes_held)


@dataclass
class _Flight(Generic[T]):
    """One image's lookup-or-compute, shared by every request that sent the same bytes."""

    task: asyncio.Task[T]
    waiters: int = 0


class ContentCache(Generic[T]):
    """Backends in order, fastest first, plus single flight across requests; what a value
    is and how it is stored and checked is the subclass's (`EmbeddingCache`, `WordsCache`)."""

    def __init__(
        self, backends: Sequence[CacheBackend], metrics: Metrics, *, prefix: str = "clip-proxy:"
    ) -> None:
        self._backends = list(backends)
        self._metrics = metrics
        self._prefix = prefix
        self._namespace: str | None = None
        self._flights: dict[str, _Flight[T]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        # Whose entries a lookup reads: the tenant's own or everyone's (cache_scope.py).
        self.scope: CacheScope = SHARED

    def _encode(self, value: T) -> bytes:
        raise NotImplementedError

    def _decode(self, sha256: str, value: bytes) -> T:
        """The stored value, checked; `CacheCorrupt` when it cannot be trusted."""
        raise NotImplementedError

    def _count(self, backend: CacheBackend, hit: bool) -> None:
        raise NotImplementedError

    @property
    def backends(self) -> list[str]:
        return [backend.name for backend in self._backends]

    def key(self, sha256: str) -> str:
        if self._namespace is None:
            raise RuntimeError("the cache is used before the encoder named its namespace")
        return f"{self._prefix}{self._namespace}:{self.scope.part()}{sha256}"

    async def get_or_compute(self, sha256: str, compute: Compute[T]) -> T:
        """The cached value, or `compute()`'s, computed once however many callers wait."""
        key = self.key(sha256)
        flight = self._flights.get(key)
        if flight is not None:
            self._metrics.cache_single_flight_joins.inc()
        else:
            # The flight is a task of its own, so a caller that goes away (a client that
            # disconnects) does not cancel the work others are waiting for.
            task = asyncio.create_task(self._lookup_or_compute(key, sha256, compute))
            flight = self._flights[key] = _Flight(task)
            task.add_done_callback(lambda done: self._land(key, done))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Every caller has gone: the work is for nobody. Cancelling it drops its
                # image from the encoder queue before compute. The flight leaves the table
                # now, not when it has unwound: a caller arriving meanwhile (a client that
                # retries at once) starts its own instead of inheriting the cancellation.
                flight.task.cancel()
                if self._flights.get(key) is flight:
                    del self._flights[key]

    def _land(self, key: str, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight nobody awaits logs nothing

    async def _lookup_or_compute(self, key: str, sha256: str, compute: Compute[T]) -> T:
        for depth, backend in enumerate(self._backends):
            found = await self._get(backend, key, sha256)
            if found is not None:
                self._count(backend, hit=True)
                # Copy it up into the faster backends this lookup missed.
                for faster in self._backends[:depth]:
                    await self._set(faster, key, self._encode(found))
                return found
            self._count(backend, hit=False)
        computed = await compute()
        value = self._encode(computed)
        for backend in self._backends:
            if isinstance(backend, MemoryBackend):
                await self._set(backend, key, value)
            else:
                # Remote writes run after the answer: no request waits for Redis to store.
                write = asyncio.create_task(self._set(backend, key, value))
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)
        return computed

    async def _get(self, backend: CacheBackend, key: str, sha256: str) -> T | None:
        try:
            value = await backend.get(key)
            return None if value is None else self._decode(sha256, value)
        except CacheUnavailable as exc:
            self._failed(backend, "get", exc)
            return None

    async def _set(self, backend: CacheBackend, key: str, value: bytes) -> None:
        try:
            await backend.set(key, value)
        except CacheUnavailable as exc:
            self._failed(backend, "set", exc)

    def _failed(self, backend: CacheBackend, operation: str, exc: CacheUnavailable) -> None:
        self._metrics.cache_errors.labels(backend=backend.name).inc()
        if isinstance(exc, CacheSkipped):
            return
        logger.warning(
            "cache %s failed; computing instead",
            operation,
            extra={"backend": backend.name, "reason": str(exc)},
        )

    async def aclose(self) -> None:
        """Let pending remote writes land (briefly); the backends are closed by their owner."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=1)


class EmbeddingCache(ContentCache[ImageEmbedding]):
    """Image vectors by content; owns (and closes) the backends it is given."""

    def __init__(
        self, backends: Sequence[CacheBackend], metrics: Metrics, *, prefix: str = "clip-proxy:"
    ) -> None:
        super().__init__(backends, metrics, prefix=prefix)
        self._dim: int | None = None
        for backend in self._backends:
            metrics.cache_hits.labels(backend=backend.name)
            metrics.cache_misses.labels(backend=backend.name)
            metrics.cache_errors.labels(backend=backend.name)
            if isinstance(backend, MemoryBackend):
                metrics.cache_bytes.labels(backend=backend.name).set_function(
                    _bytes_held_by(backend)
                )

    @property
    def backend_list(self) -> list[CacheBackend]:
        """The backends themselves, for caches of other things kept beside the vectors."""
        return list(self._backends)

    def bind(self, namespace: str, *, dim: int | None = None) -> None:
        """Name the model, preprocessing and dtype the vectors come from (`namespace_of`),
        and the dimension of the model's vectors (a cached value of another is refused)."""
        self._namespace = namespace
        self._dim = dim

    def _encode(self, value: ImageEmbedding) -> bytes:
        return value.to_bytes()

    def _decode(self, sha256: str, value: bytes) -> ImageEmbedding:
        embedding = ImageEmbedding.from_bytes(sha256, value)
        check_embedding(embedding, self._dim)
        return embedding

    def _count(self, backend: CacheBackend, hit: bool) -> None:
        counter = self._metrics.cache_hits if hit else self._metrics.cache_misses
        counter.labels(backend=backend.name).inc()

    async def aclose(self) -> None:
        await super().aclose()
        for backend in self._backends:
            await backend.aclose()


class WordsCache(ContentCache[str]):
    """Text found in an image (OCR) or said about it (a caption), by the image's content,
    beside its vector in the same backends: `{prefix}{namespace}:{sha256}` where the
    namespace names the kind, the model and its settings.

        ocr_cache = WordsCache(vectors.backend_list, metrics, kind="ocr", prefix=prefix)
        ocr_cache.bind(namespace_of("rapidocr@3.10.0|max_side=960|layout", 1, "ocr"))
    """

    def __init__(
        self,
        backends: Sequence[CacheBackend],
        metrics: Metrics,
        *,
        kind: str,
        prefix: str = "clip-proxy:",
    ) -> None:
        super().__init__(backends, metrics, prefix=prefix)
        self._kind = kind

    def bind(self, namespace: str) -> None:
        self._namespace = namespace

    def _encode(self, value: str) -> bytes:
        return value.encode("utf-8")

    def _decode(self, sha256: str, value: bytes) -> str:
        # Even a dense page of OCR text is a few KiB and a caption is a sentence: far past
        # that, the entry was not written by a proxy (and must not be held or decoded).
        if len(value) > MAX_WORDS_BYTES:
            raise CacheCorrupt(f"a cached {self._kind} text of {len(value)} bytes")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CacheCorrupt(f"a cached {self._kind} text is not UTF-8") from exc

    def _count(self, backend: CacheBackend, hit: bool) -> None:
        counter = self._metrics.words_cache_hits if hit else self._metrics.words_cache_misses
        counter.labels(kind=self._kind, backend=backend.name).inc()
