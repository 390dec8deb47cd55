"""The uvicorn server of `clip-proxy serve`, with a graceful drain on SIGTERM.

A model that cannot be loaded (`startup.failure`, set by the app's loader) stops the
server the same way, and `clip-proxy serve` exits non-zero.

On the first SIGTERM (or SIGINT): `/readyz` turns 503 and new `/v1/*` requests get 503 with
Retry-After at once; after `drain_delay_s` (time for a load balancer to see /readyz fail)
uvicorn's own graceful shutdown closes the listener, so new connections are refused, and
waits up to `shutdown_grace_s` for requests in flight, streams included, to finish. A
second signal exits at once.

    DrainingServer(uvicorn.Config(app, ...), app.state.admission, drain_delay_s=0).run()

Its connections speak `BoundedHttpToolsProtocol`: request heads bounded in size and time.

    config = server_config(app, settings, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import ctypes
import http
import logging
import os
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.admission import Admission
from app.errors import error_body

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.config import Settings
    from app.runtime.lifecycle import Startup

logger = logging.getLogger(__name__)


# glibc's mallopt parameter for the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 1024 * 1024


def return_large_buffers_to_the_os() -> None:
    """Give every allocation of 1 MiB or more its own mapping, returned to the system when
    freed.

    glibc raises this threshold by itself (up to 32 MiB) each time a large buffer is freed,
    after which the next 20 MB image bodies and pixel buffers come from the heap, where
    freed memory stays in the process and fragments. Fixed at 1 MiB, peak RSS under 32
    concurrent ~20 MB images fell from 1.60x to 1.40x the body bytes in flight for data
    URLs and from 1.46x to 1.16x for uploads (bench/front_door.py memory). A
    MALLOC_MMAP_THRESHOLD_ in the environment wins; other C libraries are left alone.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        admission: Admission,
        *,
        drain_delay_s: float = 0.0,
        startup: Startup | None = None,
    ) -> None:
        super().__init__(config)
        self.admission = admission
        self.startup_status = startup
        self.drain_delay_s = drain_delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only flags here; the main loop acts on them.
        if self._exit_at is not None:
            self.should_exit = True
            self.force_exit = True
            return
        self.admission.begin_draining()
        self._exit_at = time.monotonic() + self.drain_delay_s
        if self.drain_delay_s <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.startup_status and self.startup_status.failure and not self.should_exit:
            self.admission.begin_draining()
            self.should_exit = True
        due = self._exit_at is not None and time.monotonic() >= self._exit_at
        if due and not self.should_exit:
            logger.info("draining: closing the listener")
            self.should_exit = True
        return await super().on_tick(counter)


# --- the front door: bounded request heads --------------------------------------------------


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two bounds on a request head (line and headers).

    httptools keeps an unfinished header in memory however long it grows, and nothing
    times a head out: 8 connections each sending an endless header held 607 MiB, 1,000
    that never finished their heads held 1,016 file descriptors. Here a head longer than
    `max_head_bytes` gets 431 and the connection is closed, and a head not finished
    `head_timeout_s` after its first byte (or after the connection opened) gets 408 and is
    closed. A connection holds at most `max_head_bytes` plus one socket read of head.

    Chosen by measurement over uvicorn's h11 protocol, which bounds heads too, but costs
    more CPU per relayed chunk (bench/front_door.py, bench/results/front_door_relay.md). Build one
    with `bounded_protocol(max_head_bytes, head_timeout_s)`.
    """

    max_head_bytes = 64 * 1024
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the bytes arriving now belong to a request head
        self._head_bytes = 0  # bytes fed to the parser since that head began
        self._head_size = 0  # the complete head's size, counted from the parser's callbacks
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._bytes_seen = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._bytes_seen = True
        if self._in_head:
            if self._head_timer is None:  # the first byte of a keep-alive's next request
                self._arm_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)
        # The parser holds an unfinished head whole: stop it growing past the bound.
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self._head_size > self.max_head_bytes:
            # Arrived in one read, so the check in data_received did not see it unfinished.
            # Raising stops the parser; uvicorn then answers through send_400_response.
            self._head_too_large = True
            raise HeadTooLarge()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        # Answered before its body arrived (a 401, a 503 shed, an early 413): uvicorn would
        # keep the connection and drop the rest of the body as it trickles in, each read
        # cancelling the keep-alive timer, while neither the head nor the body timer runs.
        # A client without a key could hold the socket for ever; the connection ends here.
        unfinished = self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if unfinished and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse(431, f"the request head is larger than {self.max_head_bytes} bytes")
        else:
            super().send_400_response(msg)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a response is under way: close after it instead
            return
        if self._bytes_seen:
            self._refuse(408, f"the request head did not arrive within {self.head_timeout_s:g} s")
        else:
            self.transport.close()  # a connection that never spoke gets no answer

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head went wrong while an earlier response is still being sent:
            # an answer now would land inside that response. Only the connection ends.
            self.transport.close()
            return
        code = "header_too_large" if status == 431 else "header_timeout"
        body = orjson.dumps(error_body(message, "invalid_request_error", None, code))
        reason = http.HTTPStatus(status).phrase
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("ascii")
            + body
        )
        self.transport.close()
        self.parser = None  # type: ignore[assignment]  # what it held is freed at once


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an oversized head."""


def bounded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with these bounds."""
    return type(
        "BoundedHttpTools",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )


def server_config(
    app: FastAPI,
    settings: Settings,
    *,
    host: str,
    port: int,
    http: type[asyncio.Protocol] | str | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration for `clip-proxy serve`. `http` overrides the protocol (the
    benchmark compares the choices); the default is the bounded httptools protocol."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http or bounded_protocol(settings.max_header_bytes, settings.header_timeout_s),
        # Bounds uvicorn's h11 protocol the same way, when the benchmark chooses it.
        h11_max_incomplete_event_size=settings.max_header_bytes,
        log_config=None,  # the JSON logging of app/logging_setup.py stays
        log_level=settings.log_level,
        access_log=False,  # the proxy logs each request itself
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
