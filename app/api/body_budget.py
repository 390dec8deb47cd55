"""The memory budget of request bodies: bytes held, all requests together, reserved as they
arrive.

Each request holds a `BodyHold`; a chunk's bytes are added to it when the chunk arrives and
the whole hold is given back when the response starts or the request ends. Past the budget
a chunk waits up to `wait_s`, then its request is refused (503 `memory_budget`). Room goes
to the waiting body furthest in first: it is the nearest to being served and giving its
bytes back. (Chunks are small, so a large body is not starved by small ones: it waits for
room for its next chunk, not for all of itself.)

Reserving as bytes arrive (not the declared Content-Length) means a connection that sends
nothing holds nothing. It has one trap of its own: many bodies each part-way in can fill the
budget between them, every one waiting for room that only another's completion would free.
When every byte held belongs to a waiter, nothing can free room but a refusal, so the
waiter holding least is refused at once (its bytes go to the others) instead of all of them
waiting out `wait_s` together; and once the body furthest in has waited a quarter of
`wait_s`, the one least far in gives way to it too. Under a burst, bodies complete in turn
instead of all of them timing out part-way in.

    budget = BodyBudget(256 * 1024 * 1024)
    hold = budget.hold()
    await hold.grow(len(chunk))      # may wait, then raises Overloaded
    hold.release()                   # all of it, idempotent
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from app.errors import Overloaded

# How long a chunk may wait for room in the budget before 503: long enough for a burst of
# large images to pass through, short enough that a client retries elsewhere.
BUDGET_WAIT_S = 2.0
# The share of that wait after which the body furthest in takes room from one less far in.
PATIENCE = 0.25


class BodyHold:
    """The bytes of one request's body counted in a budget."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    async def grow(self, size: int) -> None:
        await self.budget._reserve(self, size)

    def release(self) -> None:
        self.budget._release(self)


@dataclass(eq=False)
class _Waiter:
    hold: BodyHold
    size: int
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    since: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class BodyBudget:
    """Bytes of request bodies in memory, all requests together (`held`), bounded by
    `max_bytes` (0: unbounded, still counted for the held gauge)."""

    def __init__(self, max_bytes: int, wait_s: float = BUDGET_WAIT_S) -> None:
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.held = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def fits_ever(self, size: int) -> bool:
        return not self.max_bytes or size <= self.max_bytes

    def hold(self) -> BodyHold:
        return BodyHold(self)

    def _refusal(self) -> Overloaded:
        return Overloaded(
            "the proxy is holding as many request bytes as its memory budget allows "
            f"({self.max_bytes} bytes, CLIP_PROXY_MAX_INFLIGHT_BODY_BYTES); retry shortly",
            retry_after_s=1,
            code="memory_budget",
        )

    async def _reserve(self, hold: BodyHold, size: int) -> None:
        if size <= 0:
            return
        if not self.max_bytes or self.held + size <= self.max_bytes:
            self._grant(hold, size)
            return
        waiter = _Waiter(hold, size)
        self._waiters.append(waiter)
        self._settle()
        # Looked at again once it has waited a while: then it may take room from a body
        # less far in (`_settle`).
        asyncio.get_running_loop().call_later(self.wait_s * PATIENCE, self._settle)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), self.wait_s)
        except TimeoutError:
            if waiter.granted.done():  # granted (or refused) at the last moment
                waiter.granted.result()
                return
            self._waiters.remove(waiter)
            waiter.granted.cancel()
            self._settle()  # those behind it may fit now
            raise self._refusal() from None
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.granted.cancel()
                self._settle()
            raise  # what the hold has is given back by its owner

    def _release(self, hold: BodyHold) -> None:
        if hold.held <= 0:
            return
        self.held -= hold.held
        hold.held = 0
        if self.max_bytes:
            self._settle()

    def _grant(self, hold: BodyHold, size: int) -> None:
        hold.held += size
        self.held += size

    def _settle(self) -> None:
        """Grant every waiter that fits, the body furthest in first (it is the nearest to
        done, and a done body is served and gives its bytes back). Then refuse the waiter
        holding least (its bytes go to the others) when every byte held belongs to a
        waiter (no one else can free room), or when the body furthest in has waited
        `PATIENCE` of the wait: bodies part-way in that would time out anyway give way
        early to one that can finish."""
        if not self.max_bytes:
            return
        now = asyncio.get_running_loop().time()
        while self._waiters:
            for waiter in sorted(self._waiters, key=lambda w: -w.hold.held):
                if self.held + waiter.size <= self.max_bytes:
                    self._waiters.remove(waiter)
                    self._grant(waiter.hold, waiter.size)
                    waiter.granted.set_result(None)
            holding = sorted(
                (waiter for waiter in self._waiters if waiter.hold.held > 0),
                key=lambda waiter: waiter.hold.held,
            )
            if len(holding) < 2:
                return
            stuck = sum(waiter.hold.held for waiter in holding) >= self.held
            impatient = now - holding[-1].since >= self.wait_s * PATIENCE
            if not (stuck or impatient):
                return  # someone not waiting holds bytes: its completion frees them
            victim = holding[0]
            self._waiters.remove(victim)
            self.held -= victim.hold.held
            victim.hold.held = 0
            victim.granted.set_exception(self._refusal())
