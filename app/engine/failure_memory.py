"""Keys that failed recently, forgotten after a TTL: an image whose OCR passed its deadline
is not read again on every turn of the conversation that carries it.

In this process only (bounded in entries, oldest dropped first); each replica learns on
its own, which costs one more deadline per replica at most.

    failures = FailureMemory(ttl_s=600)
    failures.remember(key)
    failures.recalls(key)     # True until 600 s later
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class FailureMemory:
    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, key: str) -> None:
        if self._ttl_s <= 0:
            return
        with self._lock:
            self._until.pop(key, None)
            self._until[key] = time.monotonic() + self._ttl_s
            while len(self._until) > self._max_entries:
                self._until.popitem(last=False)

    def recalls(self, key: str) -> bool:
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until <= time.monotonic():
                del self._until[key]
                return False
            return True
