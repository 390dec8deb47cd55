"""Bounds on request bodies, enforced while they stream in: size, time and memory.

- Size: a body longer than `max_bytes` gets 413 (at once when Content-Length says so).
- Time: a body that has not fully arrived `timeout_s` after its head gets 408, and the
  connection is closed; a client trickling a byte a second cannot hold a request open.
- Memory: `BodyBudget` bounds the bytes of bodies being read or held by all requests
  together. A request reserves its Content-Length before a byte of its body is read (a
  chunked body reserves each chunk as it comes); past the budget it waits up to
  `BUDGET_WAIT_S`, then gets 503 + Retry-After. The reservation is returned when the response
  starts (by then the images are encoded and the body's objects dropped) or the request
  ends.

Pure ASGI, so streaming responses and disconnect detection pass through untouched.

    budget = BodyBudget(1024 * 1024 * 1024)
    app.add_middleware(BodyLimitMiddleware, max_bytes=64 << 20, timeout_s=60, budget=budget)
"""

from __future__ import annotations

import asyncio
import collections

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.early_answer import answer_before_body
from app.api.errors import error_response
from app.errors import Overloaded, PayloadTooLarge, ProxyError, RequestTimeout
from app.ingest.limits import body_too_large

# How long a request may wait for room in the memory budget before 503: long enough for a
# burst of large images to pass through, short enough that a client retries elsewhere.
BUDGET_WAIT_S = 2.0


class BodyBudget:
    """Bytes of request bodies in memory, all requests together, bounded by `max_bytes`
    (0: unbounded). Waiters are served first come, first served, so a large body is not
    overtaken forever by small ones.

        await budget.reserve(n)       # may wait BUDGET_WAIT_S, then raises Overloaded
        budget.release(n)
    """

    def __init__(self, max_bytes: int, wait_s: float = BUDGET_WAIT_S) -> None:
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.held = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def fits_ever(self, size: int) -> bool:
        return not self.max_bytes or size <= self.max_bytes

    async def reserve(self, size: int) -> None:
        if not self.max_bytes or size <= 0:
            return
        if not self._waiters and self.held + size <= self.max_bytes:
            self.held += size
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
        except TimeoutError:
            if waiter.done():  # granted at the last moment: keep it
                return
            self._waiters.remove(entry)
            waiter.cancel()
            self._wake()  # those behind it may fit now
            raise Overloaded(
                "the proxy is holding as many request bytes as its memory budget allows "
                f"({self.max_bytes} bytes); retry shortly",
                retry_after_s=1,
                code="memory_budget",
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, but its request is gone
            elif entry in self._waiters:
                self._waiters.remove(entry)
                waiter.cancel()
                self._wake()
            raise

    def release(self, size: int) -> None:
        if not self.max_bytes or size <= 0:
            return
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.max_bytes:
            size, waiter = self._waiters.popleft()
            self.held += size
            waiter.set_result(None)


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 60.0,
        budget: BodyBudget | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget = budget or BodyBudget(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        try:
            if declared is not None and declared > self.max_bytes:
                # Refused before a byte of the body is read. This runs outside the app's
                # exception handlers, so it answers itself.
                raise self._too_large()
            if declared is not None and not self.budget.fits_ever(declared):
                raise PayloadTooLarge(
                    f"the request body ({declared} bytes) is larger than this proxy's memory "
                    f"budget for request bodies ({self.budget.max_bytes} bytes, "
                    "CLIP_PROXY_MAX_INFLIGHT_BODY_BYTES)"
                )
            if declared:
                await self.budget.reserve(declared)
        except ProxyError as error:
            await answer_before_body(error_response(error), scope, receive, send)
            return
        reserved = declared or 0
        received = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, reserved, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # Raised inside the route's body read: the app's handler answers it.
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                if received > self.max_bytes:
                    raise self._too_large()
                if received > reserved:  # chunked, or more than Content-Length said
                    await self.budget.reserve(received - reserved)
                    reserved = received
                complete = not message.get("more_body", False)
            else:
                complete = True  # disconnected: nothing more will come
            return message

        async def releasing_send(message: Message) -> None:
            nonlocal reserved
            if message["type"] == "http.response.start" and reserved:
                self.budget.release(reserved)
                reserved = 0
            await send(message)

        try:
            await self.app(scope, limited_receive, releasing_send)
        finally:
            self.budget.release(reserved)

    def _too_large(self) -> PayloadTooLarge:
        return body_too_large(self.max_bytes)


def declared_length(scope: Scope) -> int | None:
    """The Content-Length of a request, None when it has none (or an unreadable one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
