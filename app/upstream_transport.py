"""An httpx transport for the upstream hop, built for streaming relays: asyncio Protocols
and the C HTTP parser (httptools, which uvicorn[standard] already brings).

Why: profiling the proxy under load (bench/results/proxy.md) showed httpcore's pure-Python
stack (h11 parsing, anyio cancel scopes and sniffio look-ups on every read) costing tens of
microseconds per SSE chunk, and yielding one piece per HTTP chunk even when many are
waiting. Here the socket's bytes go through the C parser straight into a buffer, and the
reader takes everything that has arrived in one piece: under load, chunks that queued up
while the proxy was busy leave as one write instead of many.

It plugs in under httpx (`httpx.AsyncClient(transport=UpstreamTransport(...))`), so the
rest of the code still sees httpx requests, responses and exceptions: connection failures
raise `httpx.ConnectError`/`ConnectTimeout`, a silence longer than the read timeout
`httpx.ReadTimeout`, a peer that closes early `httpx.RemoteProtocolError`, as httpcore does.

HTTP/1.1 only, keep-alive connections pooled per origin; no proxies (the upstream client
never uses them), no HEAD responses (the upstream client never sends HEAD).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

Origin = tuple[str, str, int]

# Body bytes buffered for a reader that is behind before the socket stops being read.
READ_HIGH_WATER = 1024 * 1024


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle_since = time.monotonic()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._loop = asyncio.get_running_loop()
        # The read timeout, without a timer per chunk: the socket notes when bytes last
        # arrived, and one timer, armed while a reader waits, checks that note when it
        # fires (and re-arms itself from it). See `read_body`.
        self._last_data_at = self._loop.time()
        self._read_timer: asyncio.TimerHandle | None = None
        self._begin_response()

    def _begin_response(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.keep_alive = False
        self.error: httpx.HTTPError | None = None
        self._read_timed_out = False
        self.reading_paused = False
        self._wakeup: asyncio.Future[None] | None = None

    # asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._can_write.set()
        if self.complete:
            return
        if not self.headers_done.done():
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
        elif self._delimited_by_close():
            self.complete = True  # the body ran until the connection closed
            self._wake()
        else:
            self._fail(
                httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            )

    def data_received(self, data: bytes) -> None:
        self._last_data_at = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed upstream response: {exc}"))
            self.close()
            return
        if self.body_size > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # Only meaningful while the message is being parsed: llhttp resets it afterwards.
        self.keep_alive = self.parser.should_keep_alive()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.body_size += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # the request side ---------------------------------------------------------------------
    async def send_request(self, head: bytes, body: AsyncIterator[bytes], write_s: float) -> None:
        if self.transport is None or self.closed:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        self._begin_response()
        try:
            async with asyncio.timeout(write_s):
                # The head leaves with the first piece of the body: one write, one syscall.
                pending = head
                async for piece in body:
                    await self._can_write.wait()
                    if self.closed:
                        break
                    self.transport.write(pending + piece if pending else piece)
                    pending = b""
                if pending:
                    self.transport.write(pending)
        except TimeoutError as exc:
            self.close()
            raise httpx.WriteTimeout("writing the request to the upstream timed out") from exc
        except OSError as exc:
            self.close()
            raise httpx.WriteError(str(exc)) from exc

    async def wait_headers(self, read_s: float | None) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.headers_done), read_s)
        except TimeoutError as exc:
            self.close()
            raise httpx.ReadTimeout("the upstream sent no response in time") from exc

    async def read_body(self, read_s: float | None) -> AsyncIterator[bytes]:
        """Everything that has arrived, joined, each time; raises what broke the stream."""
        while True:
            if self.body:
                pieces, self.body, self.body_size = self.body, [], 0
                if self.reading_paused and self.transport is not None:
                    self.reading_paused = False
                    self.transport.resume_reading()
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                self._disarm_read_timer()
                return
            if self._read_timed_out:
                self.close()
                raise httpx.ReadTimeout("the upstream went silent for too long")
            self._wakeup = self._loop.create_future()
            if read_s is not None and self._read_timer is None:
                self._arm_read_timer(read_s)
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.error is None and not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        self._disarm_read_timer()
        if self.transport is not None:
            self.transport.close()

    # internals ----------------------------------------------------------------------------
    def _arm_read_timer(self, read_s: float) -> None:
        self._read_timer = self._loop.call_at(
            self._last_data_at + read_s, self._check_read_deadline, read_s
        )

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _check_read_deadline(self, read_s: float) -> None:
        self._read_timer = None
        if self._wakeup is None:
            return  # nobody is waiting: the next wait arms the timer again
        if self._loop.time() - self._last_data_at < read_s:
            self._arm_read_timer(read_s)  # bytes came meanwhile: wait from the newest
            return
        self._read_timed_out = True
        self._wake()

    def _delimited_by_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: httpx.HTTPError) -> None:
        if self.error is None:
            self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # retrieved here: a waiter may never come
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class ResponseStream(httpx.AsyncByteStream):
    """The body of one response; closing it returns or closes the connection."""

    def __init__(
        self, transport: UpstreamTransport, connection: UpstreamConnection, read_s: float | None
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._read_s = read_s
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.read_body(self._read_s):
            yield chunk

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport.release(self._connection)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """Pooled keep-alive HTTP/1.1 connections on asyncio Protocols (see the module doc).

    client = httpx.AsyncClient(base_url=url, transport=UpstreamTransport(max_connections=256))
    """

    def __init__(
        self,
        *,
        max_connections: int = 512,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: defaultdict[Origin, list[UpstreamConnection]] = defaultdict(list)
        self._busy: set[UpstreamConnection] = set()
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        try:
            await asyncio.wait_for(self._slots.acquire(), timeouts.get("pool"))
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no free upstream connection in time") from exc
        connection: UpstreamConnection | None = None
        try:
            connection = await self._connection_for(request, timeouts.get("connect"))
            await connection.send_request(
                request_head(request), _aiter(request.stream), timeouts.get("write") or 30.0
            )
            await connection.wait_headers(timeouts.get("read"))
        except BaseException:
            if connection is not None:
                connection.close()
                self._busy.discard(connection)
            self._slots.release()
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=ResponseStream(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def release(self, connection: UpstreamConnection) -> None:
        self._busy.discard(connection)
        self._slots.release()
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle[connection.origin].append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        connections = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        self._idle.clear()
        self._busy.clear()
        for connection in connections:
            connection.close()
        # A transport closes on a later loop turn: wait for it, so the sockets are really
        # closed (and the upstream sees it) before the loop that owns them ends.
        if connections:
            await asyncio.wait([connection.lost for connection in connections], timeout=2)

    async def _connection_for(
        self, request: httpx.Request, connect_s: float | None
    ) -> UpstreamConnection:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        origin: Origin = (url.scheme, url.host, port)
        idle = self._idle[origin]
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: least likely to be closed
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry_s:
                self._busy.add(connection)
                return connection
            connection.close()
        connection = await self._connect(origin, connect_s)
        self._busy.add(connection)
        return connection

    async def _connect(self, origin: Origin, connect_s: float | None) -> UpstreamConnection:
        scheme, host, port = origin
        ssl_context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl_context is None:
                # Built once: loading the CA bundle takes ~20 ms of CPU, on the event loop.
                self._ssl_context = httpx.create_ssl_context()
            ssl_context = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamConnection(origin),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host if ssl_context is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return protocol


def request_head(request: httpx.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
    lines.append(b"\r\n")
    return b"".join(lines)


async def _aiter(stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    if isinstance(stream, httpx.AsyncByteStream):
        async for piece in stream:
            yield piece
        return
    for piece in stream:
        yield piece
