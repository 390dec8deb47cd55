"""A real HTTP/1.1 server on loopback that plays the DeepSeek-R1 upstream.

It records every request, answers with scripted replies (SSE with `reasoning_content`
deltas, then `content` deltas, a usage chunk and `[DONE]`; or JSON), and can pause, stall,
reset a connection mid-stream or answer an error, so tests can see exactly what the proxy
sends and how it relays. Written on raw asyncio streams so connection-level behaviour
(resets, closes, how many connections are open) is under the test's control.

    with FakeUpstream() as upstream:
        upstream.script(Reply(chunk_delay_s=0.2))
        ... point the proxy at upstream.base_url ...
        upstream.requests[-1].json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MODEL = "deepseek-r1"


def r1_events(
    reasoning: tuple[str, ...] = ("The user ", "sent a cat."),
    answer: tuple[str, ...] = ("A cat ", "on a ", "sofa."),
) -> list[str]:
    """The `data:` payloads DeepSeek-R1 streams: reasoning first, then the answer, usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    events = [chunk({"role": "assistant", "content": None, "reasoning_content": ""})]
    events += [chunk({"reasoning_content": text}) for text in reasoning]
    events += [chunk({"content": text}) for text in answer]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    events.append(
        json.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
        )
    )
    events.append("[DONE]")
    return events


def chunk_event(delta: dict[str, Any], finish: str | None = None, model: str = MODEL) -> str:
    """One `chat.completion.chunk` payload: a delta, or the last chunk with its finish reason."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def usage_event(prompt: int = 10, completion: int = 7, reasoning: int | None = None) -> str:
    """The usage chunk a stream with `stream_options.include_usage` ends with."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
    )


def tool_call_events(
    name: str,
    arguments: tuple[str, ...] = ('{"city": ', '"Paris"}'),
    call_id: str = "call_1",
    reasoning: tuple[str, ...] = ("I should call ", "the tool."),
) -> list[str]:
    """An R1 stream that thinks, then calls one function (arguments in pieces)."""
    events = [chunk_event({"role": "assistant", "content": None, "reasoning_content": ""})]
    events += [chunk_event({"reasoning_content": text}) for text in reasoning]
    head = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    events.append(chunk_event({"tool_calls": [head]}))
    events += [
        chunk_event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in arguments
    ]
    events += [chunk_event({}, "tool_calls"), usage_event(12, 9, 4), "[DONE]"]
    return events


def stream_events(
    answer: tuple[str, ...], finish: str = "stop", reasoning: tuple[str, ...] = ()
) -> list[str]:
    """A stream of `answer` pieces ending with `finish` ("length": cut at max tokens)."""
    events = [chunk_event({"role": "assistant", "content": None, "reasoning_content": ""})]
    events += [chunk_event({"reasoning_content": text}) for text in reasoning]
    events += [chunk_event({"content": text}) for text in answer]
    return [*events, chunk_event({}, finish), usage_event(), "[DONE]"]


def completion(
    content: str | None = "A cat on a sofa.",
    *,
    reasoning: str | None = "The user sent a cat.",
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
) -> dict[str, Any]:
    """A non-streamed chat completion, as scripted as the streams above."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
    }


def r1_completion(answer: str = "A cat on a sofa.") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer,
                    "reasoning_content": "The user sent a cat.",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
    }


@dataclass(frozen=True)
class Wire:
    """Bytes exactly as they go on the socket, for what the server above never sends
    itself: interim 1xx answers, close-delimited bodies, pauses inside an event, cuts.

    `steps`: bytes are written, a number pauses that many seconds. `end`: "keep" (the
    connection serves the next request), "fin" (closed cleanly) or "rst" (aborted)."""

    steps: tuple[bytes | float, ...]
    end: str = "keep"


@dataclass
class Reply:
    """One scripted answer. Defaults: the R1 stream (or JSON when the request is not streamed)."""

    status: int = 200
    events: list[str] | None = None  # `data:` payloads; a string starting ':' is a comment
    body: Any = None  # JSON body for non-streamed or error replies
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay_s: float = 0.0
    stall_before_headers_s: float = 0.0
    reset_after_chunks: int | None = None  # abort the TCP connection after N chunks
    first_chunk_delay_s: float = 0.0  # headers sent, then silence (a model thinking)
    wire: Wire | None = None  # raw bytes instead of any of the above
    drop: str | None = None  # read the request, then "fin" or "rst" without an answer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    connection: int = 0  # which TCP connection carried it (1, 2, ... in order of opening)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeUpstream:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context  # serve https (a test CA's certificate)
        self.requests: list[Recorded] = []
        self.chunk_sent_at: list[float] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.closed_at: list[float] = []
        self.closed_connections: dict[int, float] = {}  # connection -> monotonic close time
        self._script: deque[Reply] = deque()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()  # else its self-pipe leaks a ResourceWarning at exit

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self._ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # Connections still being served (a slow stream nobody reads) end here, so the
        # loop closes with no task left pending.
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    @property
    def open_connections(self) -> int:
        return self.connections_opened - self.connections_closed

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def reset(self) -> None:
        self.requests.clear()
        self.chunk_sent_at.clear()
        self._script.clear()

    # protocol --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_opened += 1
        connection = self.connections_opened
        try:
            while await self._serve_one(reader, writer, connection):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.connections_closed += 1
            self.closed_at.append(time.monotonic())
            self.closed_connections[connection] = self.closed_at[-1]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int = 0
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        recorded = Recorded(method, path, headers, body, time.monotonic(), connection)
        self.requests.append(recorded)
        reply = self._script.popleft() if self._script else Reply()
        if reply.drop is not None:
            if reply.drop == "rst":
                writer.transport.abort()
            return False
        if reply.wire is not None:
            return await self._send_wire(writer, reply.wire)
        if reply.stall_before_headers_s:
            await self._pause(reader, reply.stall_before_headers_s)
        if path.endswith("/models"):
            model = {"id": MODEL, "object": "model", "owned_by": "test"}
            payload = {"object": "list", "data": [model]}
            await self._send_json(writer, 200, payload, {})
            return True
        wants_stream = method == "POST" and bool(recorded.json.get("stream"))
        if reply.status != 200 or reply.body is not None or reply.raw_body is not None:
            await self._send_json(writer, reply.status, reply.body, reply.headers, reply.raw_body)
            return True
        if not wants_stream:
            await self._send_json(writer, 200, r1_completion(), reply.headers)
            return True
        return await self._send_stream(writer, reply, reader)

    async def _send_wire(self, writer: asyncio.StreamWriter, wire: Wire) -> bool:
        for step in wire.steps:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
                self.chunk_sent_at.append(time.monotonic())
            else:
                await asyncio.sleep(step)
        if wire.end == "rst":
            writer.transport.abort()
        return wire.end == "keep"

    async def _pause(self, reader: asyncio.StreamReader | None, seconds: float) -> None:
        """Sleep, but notice at once if the client closes the connection meanwhile."""
        if reader is None:
            await asyncio.sleep(seconds)
            return
        try:
            data = await asyncio.wait_for(reader.read(1), seconds)
        except TimeoutError:
            return
        if not data:
            raise ConnectionResetError("the client closed the connection")

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict[str, str],
        raw: bytes | None = None,
    ) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        content_type = headers.pop("content-type", "application/json")
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )
        await writer.drain()

    async def _send_stream(
        self,
        writer: asyncio.StreamWriter,
        reply: Reply,
        reader: asyncio.StreamReader | None = None,
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        await writer.drain()
        events = reply.events if reply.events is not None else r1_events()
        for index, event in enumerate(events):
            if reply.reset_after_chunks is not None and index == reply.reset_after_chunks:
                writer.transport.abort()
                return False
            if index == 0 and reply.first_chunk_delay_s:
                await self._pause(reader, reply.first_chunk_delay_s)
            if index and reply.chunk_delay_s:
                await self._pause(reader, reply.chunk_delay_s)
            payload = (event if event.startswith(":") else f"data: {event}") + "\n\n"
            data = payload.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
            self.chunk_sent_at.append(time.monotonic())
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
