"""A fast OpenAI-compatible upstream for the proxy benchmark, run as its own process.

It answers `POST .../chat/completions` with a scripted SSE stream (`--chunks` content
deltas, `--delay-ms` apart, the first one at once) or, when the request does not ask for a
stream, with one JSON completion. Every content delta carries the moment it was written,
`@t=<CLOCK_MONOTONIC ns>;`, so a client on the same machine can measure how long each
chunk took from the upstream's socket to its own (CLOCK_MONOTONIC is system-wide on Linux).
`GET .../models` answers a one-model list.

Written on a raw asyncio Protocol under uvloop, with one timer per stream and no coroutine
per chunk, so it stays far from being the bottleneck at hundreds of concurrent streams.

    python bench/sse_upstream.py --port 9100 --chunks 200 --delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import orjson
import uvloop

MODEL = "deepseek-r1"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
CHUNK_PREFIX = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,'
    b'"model":"deepseek-r1","choices":[{"index":0,"delta":{'
)
CHUNK_SUFFIX = b'},"finish_reason":null}]}\n\n'
FINAL_EVENTS = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,'
    b'"model":"deepseek-r1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
MODELS_BODY = orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
)


def framed(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def content_event(index: int) -> bytes:
    role = b'"role":"assistant",' if index == 0 else b""
    return b'%s%s"content":"@t=%d; "%s' % (
        CHUNK_PREFIX,
        role,
        time.monotonic_ns(),
        CHUNK_SUFFIX,
    )


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"@t={time.monotonic_ns()}; "},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
    )


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered one after the other."""

    def __init__(self, chunks: int, delay_s: float) -> None:
        self.chunks = chunks
        self.delay_s = delay_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self.next_request()

    def next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        start = head.find(b"content-length:")
        if start >= 0:
            line_end = head.find(b"\r\n", start)
            length = int(head[start + 15 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        request_line = head[: head.find(b"\r\n")]
        if b"/models" in request_line:
            self.send_json(MODELS_BODY)
        elif b'"stream":true' in body.replace(b" ", b""):
            self.start_stream()
        else:
            self.send_json(completion_body())

    def send_json(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.next_request()

    def start_stream(self) -> None:
        assert self.transport is not None
        self.streaming = True
        self.transport.write(STREAM_HEAD + framed(content_event(0)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.schedule(loop, started, 1)

    def schedule(self, loop: asyncio.AbstractEventLoop, started: float, index: int) -> None:
        # Deadlines from the stream's start, not from the last send, so the pace never drifts.
        deadline = started + index * self.delay_s
        self.timer = loop.call_at(deadline, self.send_next, loop, started, index)

    def send_next(self, loop: asyncio.AbstractEventLoop, started: float, index: int) -> None:
        if self.transport is None:
            return
        if index < self.chunks:
            self.transport.write(framed(content_event(index)))
            self.schedule(loop, started, index + 1)
            return
        self.transport.write(framed(FINAL_EVENTS) + b"0\r\n\r\n")
        self.timer = None
        self.streaming = False
        self.next_request()


async def serve(host: str, port: int, chunks: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(chunks, delay_s), host, port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunks, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
