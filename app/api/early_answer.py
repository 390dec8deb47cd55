"""Answering before the request body was read, without losing the answer.

A server that answers (413, 401, 503) and closes while the client is still sending leaves
unread bytes in its socket; the kernel then resets the connection, and the client reads a
connection error instead of the answer (32 clients x 19 MB against a full body budget: 22
resets). nginx reads and discards for a while before closing (`lingering_close`). Under
uvicorn an app cannot read after its response is complete (`receive` then says
"disconnect"), so the body is read and dropped first, bounded in time and bytes, and the
answer then goes with `Connection: close`: the client reads it, the connection ends
cleanly, and a pooled client opens a new one for its next request.

    await answer_before_body(error_response(error), scope, receive, send)
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How long, in all, a refused body is read and dropped (nginx's lingering_time), and how
# long one silence may last (lingering_timeout); past either the answer goes anyway.
LINGERING_TIME_S = 30.0
LINGERING_TIMEOUT_S = 5.0
# Bytes dropped at most: past it the answer goes, and the client may see a reset.
LINGERING_MAX_BYTES = 1024 * 1024 * 1024


async def answer_before_body(answer: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Drop what the client is still sending (bounded), then send `answer` with
    `Connection: close`."""
    await drain(receive)

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = with_connection_close(message)
        await send(message)

    await answer(scope, receive, closing)


def with_connection_close(start: Message) -> Message:
    """An `http.response.start` message that ends the connection after its response."""
    headers = [
        (name, value) for name, value in start.get("headers", []) if name.lower() != b"connection"
    ]
    return {**start, "headers": [*headers, (b"connection", b"close")]}


async def drain(receive: Receive) -> int:
    """Read and drop the request body until it ends, the client goes, or the bounds pass.
    Returns the bytes dropped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGERING_TIME_S
    dropped = 0
    while dropped <= LINGERING_MAX_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            message = await asyncio.wait_for(receive(), min(left, LINGERING_TIMEOUT_S))
        except TimeoutError:
            break
        if message["type"] != "http.request":
            break  # the client went away
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return dropped
