"""Closed-loop HTTP/1.1 load generator for the proxy benchmark, run as its own process.

`--concurrency` workers each hold one keep-alive connection and send the same request
again and again until `--duration-s` has passed; each worker's first request (connection
set-up, warm-up) is not counted, and the workers start spread over `--stagger-s` so their
streams are not in lock-step. For every request it records the time to the first content
chunk, the total time, the number of content chunks, and for every chunk the gap between
the upstream writing it (the `@t=<ns>;` stamp `sse_upstream.py` puts in each delta) and
this process reading it. It writes one JSON document to `--out`.

Raw asyncio Protocol under uvloop with a small chunked-transfer decoder: no HTTP library
sits between the socket and the clock, so the generator stays cheap per chunk.

    python bench/loadgen.py --port 8000 --body-file req.json --concurrency 50 --duration-s 8 \
        --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson
import uvloop

STAMP = re.compile(rb"@t=(\d+);")
# `--count-events PREFIX`: only events that start with it count as content chunks (a
# Responses stream repeats the whole text in its `.done` and `response.completed` events).
COUNTED_EVENTS: bytes | None = None


@dataclass
class Result:
    status: int = 0
    ttfc_ns: int = -1
    total_ns: int = 0
    chunks: int = 0
    gaps_ns: list[int] = field(default_factory=list)
    error: str = ""


class ClientProtocol(asyncio.Protocol):
    """One keep-alive connection that runs one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reset()

    def reset(self) -> None:
        self.done: asyncio.Future[Result] | None = None
        self.result = Result()
        self.started_ns = 0
        self.raw = bytearray()  # bytes of the response not yet consumed
        self.head_done = False
        self.chunked = False
        self.remaining = 0  # content-length left, or bytes left in the current chunk
        self.events = bytearray()  # decoded body since the last complete SSE event
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if self.done is not None and not self.done.done():
            self.result.error = self.result.error or f"connection lost: {exc}"
            self.done.set_result(self.result)

    def send(self, request: bytes) -> asyncio.Future[Result]:
        assert self.transport is not None
        self.reset()
        self.done = asyncio.get_running_loop().create_future()
        self.started_ns = time.monotonic_ns()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.raw += data
        if not self.head_done and not self.parse_head():
            return
        if self.chunked:
            self.decode_chunks(now)
        else:
            take = min(self.remaining, len(self.raw))
            self.body(bytes(self.raw[:take]), now)
            del self.raw[:take]
            self.remaining -= take
            if self.remaining == 0:
                self.finish(now)

    def parse_head(self) -> bool:
        end = self.raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.raw[:end]).lower()
        del self.raw[: end + 4]
        self.head_done = True
        self.result.status = int(head[9:12])
        self.chunked = b"transfer-encoding: chunked" in head
        self.keep_alive = b"connection: close" not in head
        match = re.search(rb"content-length: *(\d+)", head)
        self.remaining = int(match.group(1)) if match else 0
        return True

    def decode_chunks(self, now: int) -> None:
        raw = self.raw
        while raw:
            if self.remaining == 0:
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(raw[:line_end].split(b";", 1)[0], 16)
                if size == 0:
                    if len(raw) < line_end + 4:
                        return
                    del raw[: line_end + 4]
                    self.finish(now)
                    return
                del raw[: line_end + 2]
                self.remaining = size + 2  # the chunk and its CRLF
            take = min(self.remaining, len(raw))
            data_end = min(take, self.remaining - 2) if self.remaining > 2 else 0
            if data_end > 0:
                self.body(bytes(raw[:data_end]), now)
            del raw[:take]
            self.remaining -= take

    def body(self, data: bytes, now: int) -> None:
        self.events += data
        boundary = self.events.rfind(b"\n\n")
        if boundary < 0 and self.chunked:
            return
        end = boundary + 2 if self.chunked else len(self.events)
        complete = bytes(self.events[:end])
        del self.events[:end]
        if COUNTED_EVENTS is not None and self.result.status == 200:
            counted = COUNTED_EVENTS
            complete = b"\n\n".join(
                event for event in complete.split(b"\n\n") if event.startswith(counted)
            )
        result = self.result
        for stamp in STAMP.findall(complete):
            if result.ttfc_ns < 0:
                result.ttfc_ns = now - self.started_ns
            result.chunks += 1
            result.gaps_ns.append(now - int(stamp))
        if result.status != 200 and not result.error:
            result.error = complete[:200].decode("utf-8", "replace")

    def finish(self, now: int) -> None:
        if self.events:
            self.body(b"\n\n", now)
        self.result.total_ns = now - self.started_ns
        if self.done is not None and not self.done.done():
            self.done.set_result(self.result)
        if not self.keep_alive and self.transport is not None:
            self.transport.close()


async def worker(
    host: str,
    port: int,
    request: bytes,
    start_at: float,
    stop_at: float,
    results: list[Result],
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    protocol: ClientProtocol | None = None
    first = True
    while loop.time() < stop_at:
        if protocol is None or protocol.transport is None:
            _, protocol = await loop.create_connection(ClientProtocol, host, port)
        result = await protocol.send(request)
        if not first:
            results.append(result)
        first = False
        if result.error and result.status == 0:
            protocol = None
    if protocol is not None and protocol.transport is not None:
        protocol.transport.close()


def build_request(host: str, port: int, path: str, body: bytes, api_key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    request = build_request(args.host, args.port, args.path, body, args.api_key)
    loop = asyncio.get_running_loop()
    began = loop.time()
    stop_at = began + args.stagger_s + args.duration_s
    results: list[Result] = []
    workers = [
        worker(
            args.host,
            args.port,
            request,
            began + args.stagger_s * index / args.concurrency,
            stop_at,
            results,
        )
        for index in range(args.concurrency)
    ]
    await asyncio.gather(*workers)
    return {
        "wall_s": loop.time() - began,
        "requests": [
            {
                "status": r.status,
                "ttfc_us": r.ttfc_ns // 1000 if r.ttfc_ns >= 0 else None,
                "total_us": r.total_ns // 1000,
                "chunks": r.chunks,
                "error": r.error,
            }
            for r in results
        ],
        "gaps_us": [gap // 1000 for r in results for gap in r.gaps_ns],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--stagger-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    parser.add_argument("--count-events", help="count only events starting with this")
    args = parser.parse_args()
    global COUNTED_EVENTS
    COUNTED_EVENTS = args.count_events.encode() if args.count_events else None
    results = uvloop.run(run(args, Path(args.body_file).read_bytes()))
    args.out.write_bytes(orjson.dumps(results))


if __name__ == "__main__":
    main()
