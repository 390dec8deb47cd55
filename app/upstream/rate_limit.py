"""A client-side rate limit toward the upstream: requests leave at most `rate_per_s` a second.

Requests are spaced evenly, each reserving the next free slot; one whose slot is more than
`max_wait_s` away is refused with `RateLimited` (429 + Retry-After) instead of queueing
without bound, so a burst waits briefly and an overload is told to come back later.

    limiter = RateLimiter(rate_per_s=3, max_wait_s=2)
    await limiter.acquire()   # before every upstream attempt, retries included
"""

from __future__ import annotations

import asyncio
import math
import time

from app.errors import RateLimited


class RateLimiter:
    def __init__(self, rate_per_s: float, max_wait_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._interval = 1.0 / rate_per_s
        self._max_wait_s = max_wait_s
        self._next_slot = 0.0

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next_slot)
        wait = slot - now
        if wait > self._max_wait_s:
            raise RateLimited(
                "too many requests toward the upstream; retry later",
                retry_after_s=max(1, math.ceil(wait)),
            )
        # Reserved before sleeping, so concurrent callers queue behind each other.
        self._next_slot = slot + self._interval
        if wait > 0:
            await asyncio.sleep(wait)
