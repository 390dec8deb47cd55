"""Where the content caches keep their bytes: an in-process LRU, a Redis shared by replicas.

A backend stores opaque bytes by key; what the bytes mean and whether they can be trusted
is the cache's (`cache.py`). A backend that fails or is slow raises `CacheUnavailable`,
which the cache counts and logs and then computes instead, so a backend never fails a
request.

    backends = build_backends(256 * MiB, "redis://cache:6379/0", ttl_s=86400, timeout_s=0.1)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

T = TypeVar("T")


class CacheUnavailable(Exception):
    """A backend could not answer (down, slow, or holding a malformed value)."""


class CacheCorrupt(CacheUnavailable):
    """A backend answered with a value this model could not have made."""


class CacheSkipped(CacheUnavailable):
    """A backend left alone after a recent failure (counted, not logged again)."""


class CacheBackend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def aclose(self) -> None: ...


class MemoryBackend:
    """An LRU in this process, bounded by the bytes of the values it holds."""

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes_held = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes_held -= len(old)
        self._entries[key] = value
        self.bytes_held += len(value)
        while self.bytes_held > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_held -= len(evicted)

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes_held = 0


class RedisBackend:
    """A Redis shared by replicas. Short timeouts, no retries, and after a failure it is
    left alone for `pause_s`, so a dead Redis costs requests nothing but a counter."""

    name = "redis"

    def __init__(
        self, url: str, *, ttl_s: int, timeout_s: float = 0.1, pause_s: float = 2.0
    ) -> None:
        self._client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._paused_until = 0.0

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._client.get(key))
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        await self._call(self._client.set(key, value, ex=self._ttl_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, operation: Awaitable[T]) -> T:
        if time.monotonic() < self._paused_until:
            if asyncio.iscoroutine(operation):
                operation.close()  # never started; closing it avoids a "never awaited" warning
            raise CacheSkipped("redis is paused after a recent failure")
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._paused_until = time.monotonic() + self._pause_s
            raise CacheUnavailable(f"redis failed: {type(exc).__name__}") from exc


def build_backends(
    memory_bytes: int, url: str, *, ttl_s: int, timeout_s: float
) -> list[CacheBackend]:
    """The memory LRU (unless its size is 0), then Redis if a URL is set."""
    backends: list[CacheBackend] = []
    if memory_bytes > 0:
        backends.append(MemoryBackend(memory_bytes))
    if url:
        backends.append(RedisBackend(url, ttl_s=ttl_s, timeout_s=timeout_s))
    return backends
