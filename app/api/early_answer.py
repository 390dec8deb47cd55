"""Answering before the request body was read, without losing the answer.

A server that answers (413, 401, 503) and closes while the client is still sending leaves
unread bytes in its socket; the kernel then resets the connection, and the client reads a
connection error instead of the answer (32 clients x 19 MB against a full body budget: 22
resets). nginx reads and discards for a while before closing (`lingering_close`). Under
uvicorn an app cannot read after its response is complete (`receive` then says
"disconnect"), so the body is read and dropped first, bounded in time and bytes, and the
answer then goes with `Connection: close`: the client reads it, the connection ends
cleanly, and a pooled client opens a new one for its next request.

    lingering = Lingering(time_s=30, timeout_s=5, on_close=lambda reason: counter.inc())
    await lingering.answer(error, scope, receive, send)     # before the body is read
    await lingering.drain(receive, error)                   # refused part-way through it
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import ProxyError

GiB = 1024 * 1024 * 1024


def _ignore(reason: str) -> None:
    pass


@dataclass(frozen=True)
class Lingering:
    """How long, in all, a refused body is read and dropped (`time_s`, nginx's
    lingering_time), how long one silence may last (`timeout_s`, lingering_timeout), and
    how many bytes at most (`max_bytes`); past any of them the answer goes anyway, and the
    client may then see a reset. `on_close` is told the error code of each lingering close
    (the metrics count them)."""

    time_s: float = 30.0
    timeout_s: float = 5.0
    max_bytes: int = GiB
    on_close: Callable[[str], None] = _ignore

    async def answer(self, error: ProxyError, scope: Scope, receive: Receive, send: Send) -> None:
        """Drop what the client is still sending (bounded), then send the error with
        `Connection: close`."""
        await self.drain(receive, error)

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_connection_close(message)
            await send(message)

        await error_response(error)(scope, receive, closing)

    async def drain(self, receive: Receive, error: ProxyError) -> int:
        """Read and drop the request body until it ends, the client goes, or the bounds
        pass; counted as a lingering close for `error`. Returns the bytes dropped."""
        self.on_close(error.label)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.time_s
        dropped = 0
        while dropped <= self.max_bytes:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                message = await asyncio.wait_for(receive(), min(left, self.timeout_s))
            except TimeoutError:
                break
            if message["type"] != "http.request":
                break  # the client went away
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return dropped


def with_connection_close(start: Message) -> Message:
    """An `http.response.start` message that ends the connection after its response."""
    headers = [
        (name, value) for name, value in start.get("headers", []) if name.lower() != b"connection"
    ]
    return {**start, "headers": [*headers, (b"connection", b"close")]}
