"""Stop work for a client that went away, read from the ASGI receive channel.

Once the route has read the body, the next `receive()` returns only when the client
disconnects. Racing the work against it cancels the work at once: queued images are
dropped (the encoder pool skips jobs whose future is cancelled) and an upstream request
still waiting for its headers is cancelled and its connection closed. After a response has
started, Starlette's StreamingResponse does the same race for the stream itself.
(`request.is_disconnected()` polls, and `BaseHTTPMiddleware` hides the channel: neither.)

    outcome = await unless_disconnected(request.receive, service.complete(...))
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed its connection before the answer was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """The result of `work`, or `ClientDisconnected` (with `work` cancelled) if the client
    leaves first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientDisconnected
