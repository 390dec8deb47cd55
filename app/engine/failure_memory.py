"""Keys that failed recently, forgotten after a TTL: an image whose OCR passed its deadline
is not read again on every turn of the conversation that carries it.

In this process (bounded in entries, oldest dropped first), and, when the caches have a
Redis, there too (`{key}:failed`, expiring after the same TTL): another replica behind the
load balancer that gets the next turn does not spend a deadline reading the image again.
Redis is a help, not a need: when it fails, each replica learns on its own.

    failures = FailureMemory(ttl_s=600, shared=redis_backend)
    await failures.remember(key)
    await failures.recalls(key)     # True until 600 s later, on every replica
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict

from app.engine.cache_backends import CacheUnavailable, RedisBackend

# What a shared failure entry holds: its presence is the fact.
_MARK = b"1"


class FailureMemory:
    def __init__(
        self, ttl_s: float, *, max_entries: int = 10_000, shared: RedisBackend | None = None
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._shared = shared
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    async def remember(self, key: str) -> None:
        if self._ttl_s <= 0:
            return
        self.remember_here(key)
        if self._shared is not None:
            with contextlib.suppress(CacheUnavailable):  # this replica still remembers
                await self._shared.set(shared_key(key), _MARK, ttl_s=math.ceil(self._ttl_s))

    async def recalls(self, key: str) -> bool:
        if self._ttl_s <= 0:
            return False
        if self.recalls_here(key):
            return True
        if self._shared is None:
            return False
        try:
            return await self._shared.get(shared_key(key)) is not None
        except CacheUnavailable:
            return False

    def remember_here(self, key: str) -> None:
        if self._ttl_s <= 0:
            return
        with self._lock:
            self._until.pop(key, None)
            self._until[key] = time.monotonic() + self._ttl_s
            while len(self._until) > self._max_entries:
                self._until.popitem(last=False)

    def recalls_here(self, key: str) -> bool:
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until <= time.monotonic():
                del self._until[key]
                return False
            return True


def shared_key(key: str) -> str:
    """Beside the words entry of the same image and scope, never mistaken for its text."""
    return f"{key}:failed"
