"""SSE keep-alive: a comment line whenever a stream has been silent for a while.

Reasoning models can think for minutes between tokens, and load balancers cut connections
that stay idle for 60 s. An SSE comment (`: ping`) is ignored by every SSE client, so it
keeps the connection busy without changing the stream's content.

    async for chunk in with_pings(reply.relay(), interval_s=15): ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio

PING = b": ping\n\n"


async def with_pings(chunks: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """`chunks` as they come, with `PING` after every `interval_s` of silence."""
    if interval_s <= 0:
        async for chunk in chunks:
            yield chunk
        return
    # The next chunk is awaited in its own task: a timeout must not cancel the read itself
    # (httpx would drop the connection), it only decides that a ping is due.
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield PING
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None and not pending.done():
            # The client went away mid-wait: cancelling the read unwinds the inner
            # iterator in its own task, which closes the upstream response.
            pending.cancel()
        elif hasattr(chunks, "aclose"):
            # Shielded: under Starlette's cancel scope every await here would be cancelled
            # again, and the upstream connection must be released all the same.
            with anyio.CancelScope(shield=True), contextlib.suppress(RuntimeError):
                await chunks.aclose()
