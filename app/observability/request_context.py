"""What the proxy knows about the request it is serving now: its id, its stage timings.

The request observer (`app/api/observe.py`) opens a `RequestRecord` for each HTTP request
and binds it to a context variable; every stage below it (image fetch, encode, upstream)
notes its duration here without being handed anything, because asyncio tasks inherit the
context. At the end the observer turns the record into the `Server-Timing` header, one log
line and the request metrics. Outside a request every `note_*` call is a no-op.

    with bound(RequestRecord.start("3f2a...")) as record:
        note_stage("fetch", 0.012)
        record.server_timing()   # 'fetch;dur=12.0'
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# An incoming id is honoured only if it is short and plain: it goes into headers and logs.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

# Server-Timing shows these stages, in this order, when the request went through them.
SERVER_TIMING_STAGES = (
    "images",
    "fetch",
    "decode",
    "preprocess",
    "encode",
    "document",
    "ocr",  # the describe preset's words, or a document page read by OCR
    "caption",
    "describe",
    "upstream_ttfb",
)


def new_request_id(incoming: str | None = None) -> str:
    """The client's `X-Request-ID` when it is safe to echo, else a fresh random one."""
    if incoming and _SAFE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """One request's id, stage durations (seconds) and the facts its log line reports."""

    request_id: str
    started: float
    stages: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    # The client's raw headers, for those the upstream client forwards (forward_headers.py).
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Headers a stage wants on the response (`note_response_header`), set by the observer.
    response_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls, request_id: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> RequestRecord:
        return cls(request_id=request_id, started=time.perf_counter(), headers=headers or [])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def server_timing(self) -> str:
        """The `Server-Timing` header value: each stage seen so far, in milliseconds."""
        parts = [
            f"{name};dur={self.stages[name] * 1000:.1f}"
            for name in SERVER_TIMING_STAGES
            if name in self.stages
        ]
        parts.append(f'proxy;dur={self.elapsed() * 1000:.1f};desc="until response headers"')
        return ", ".join(parts)


_current: ContextVar[RequestRecord | None] = ContextVar("clip_proxy_request", default=None)


@contextmanager
def bound(record: RequestRecord) -> Iterator[RequestRecord]:
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def current() -> RequestRecord | None:
    return _current.get()


def current_request_id() -> str | None:
    record = _current.get()
    return record.request_id if record is not None else None


def current_request_headers() -> list[tuple[bytes, bytes]]:
    """The raw headers of the request being served; empty outside a request."""
    record = _current.get()
    return record.headers if record is not None else []


def note_stage(name: str, seconds: float) -> None:
    """A stage's duration. Images of one request run side by side, so the slowest counts."""
    record = _current.get()
    if record is not None:
        record.stages[name] = max(seconds, record.stages.get(name, 0.0))


def note_error(label: str) -> None:
    """What went wrong, as a short fixed label (an error code): counted and logged once."""
    record = _current.get()
    if record is not None and record.error is None:
        record.error = label


def note_fact(name: str, value: Any) -> None:
    """Something the request's log line should say (images, tokens, stream outcome)."""
    record = _current.get()
    if record is not None:
        record.facts[name] = value


def note_response_header(name: str, value: str) -> None:
    """A header for the response to the request being served (documents cut, ...)."""
    record = _current.get()
    if record is not None:
        record.response_headers[name] = value


def count_fact(name: str, amount: int = 1) -> None:
    record = _current.get()
    if record is not None:
        record.facts[name] = record.facts.get(name, 0) + amount
