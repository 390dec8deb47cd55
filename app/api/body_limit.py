"""Bounds on request bodies, enforced while they stream in: size, time and memory.

- Size: a body longer than `max_bytes` gets 413 (at once when Content-Length says so).
- Time: a body that has not fully arrived `timeout_s` after its head gets 408, and the
  connection is closed; a client trickling a byte a second cannot hold a request open.
- Memory: `BodyBudget` (`body_budget.py`) bounds the bytes of bodies being read or held
  by all requests together. A request reserves its body's bytes as they arrive, not the
  Content-Length it declares: a connection that declares 64 MiB and sends nothing holds
  nothing, so a few of them cannot lock the budget for the body timeout. A declared length
  larger than the whole budget is 413 at once (it could never fit). When arriving bytes do
  not fit, the request waits up to `BUDGET_WAIT_S` (less when bodies part-way in fill the
  budget), then gets 503 `memory_budget` + Retry-After; the rest of its body is read and
  dropped first (lingering close, `early_answer.py`) and the answer says
  `Connection: close`. The hold is returned when the response starts (by then the images
  are encoded and the body's objects dropped) or the request ends.

Pure ASGI, so streaming responses and disconnect detection pass through untouched.

    budget = BodyBudget(1024 * 1024 * 1024)
    app.add_middleware(BodyLimitMiddleware, max_bytes=64 << 20, timeout_s=60, budget=budget)
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.body_budget import BodyBudget
from app.api.early_answer import Lingering, with_connection_close
from app.errors import Overloaded, PayloadTooLarge, ProxyError, RequestTimeout
from app.ingest.limits import body_too_large


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 60.0,
        budget: BodyBudget | None = None,
        lingering: Lingering | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget = budget or BodyBudget(0)
        self.lingering = lingering or Lingering()

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
        except ProxyError as error:
            await self.lingering.answer(error, scope, receive, send)
            return
        hold = self.budget.hold()
        received = 0
        complete = False
        closing = False  # refused mid-body: the answer ends the connection
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def refuse_mid_body(error: ProxyError, more: bool) -> ProxyError:
            # What was held is dropped, and so is the rest of the body (bounded), so the
            # client reads the answer instead of a reset; the route's handler sends it.
            nonlocal complete, closing
            hold.release()
            if more:
                await self.lingering.drain(receive, error)
                closing = True
            complete = True
            return error

        async def limited_receive() -> Message:
            nonlocal received, complete
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
                more = message.get("more_body", False)
                if received > self.max_bytes:
                    raise await refuse_mid_body(self._too_large(), more) from None
                try:
                    await hold.grow(chunk)
                except Overloaded as refused:
                    raise await refuse_mid_body(refused, more) from None
                complete = not more
            else:
                complete = True  # disconnected: nothing more will come
            return message

        async def releasing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                hold.release()
                if closing:
                    message = with_connection_close(message)
            await send(message)

        try:
            await self.app(scope, limited_receive, releasing_send)
        finally:
            hold.release()

    def _too_large(self) -> PayloadTooLarge:
        return body_too_large(self.max_bytes)


def declared_length(scope: Scope) -> int | None:
    """The Content-Length of a request, None when it has none (or an unreadable one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
