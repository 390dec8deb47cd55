"""The streamed chat response: the upstream's SSE bytes, relayed, with keep-alive pings.

A `StreamingResponse` (so Starlette still races the stream against `http.disconnect` and
cancels it when the client leaves) whose send loop does only what each chunk needs: one
ASGI `send`, one clock read and a look at the chunk's last bytes (pings only go out between
events). Pings come from one `IdleTimer` task per stream rather than
from a wrapper that awaits every chunk with a timeout (a task, a future and a timer per
chunk, measured in bench/profile_proxy.py).

    return RelayResponse(chunks, close=response.aclose, ping_interval_s=15, media_type=...)

`close` is the upstream response's own idempotent `aclose`: called here once the response is
over, however it ended, so the upstream connection is released with the client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.upstream.keepalive import PING, IdleTimer


class RelayResponse(StreamingResponse):
    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        close: Callable[[], Awaitable[None]],
        ping_interval_s: float,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        ping: bytes = PING,
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self._ping = ping  # the keep-alive: an SSE comment, or a dialect's own ping event
        self._chunks = chunks
        self._close = close
        self.ping_interval_s = ping_interval_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the client left before the first chunk, so the body loop (and the
            # generators' own `finally`) never ran: the upstream connection goes back now.
            with anyio.CancelScope(shield=True):
                await self._close()

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        pinger: asyncio.Task[None] | None = None
        touch: Callable[[bytes], None] = _nothing
        if self.ping_interval_s > 0:
            timer = IdleTimer(self.ping_interval_s)
            touch = timer.touch

            async def ping() -> None:
                # A second sender on the same response is safe: an ASGI server writes each
                # body message whole, so a ping lands between two chunks, never inside one.
                await send({"type": "http.response.body", "body": self._ping, "more_body": True})

            pinger = asyncio.create_task(timer.ping_when_idle(ping))
        try:
            async for chunk in self._chunks:
                # Noted before the send: while a slow client holds this send, the pinger
                # already knows the bytes going out may end mid-event.
                touch(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            if pinger is not None:
                pinger.cancel()  # before the final message: no ping after the body's end
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _nothing(chunk: bytes) -> None:
    pass
