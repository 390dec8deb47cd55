"""The upstream DeepSeek-R1 API: one shared httpx client, errors translated once, SSE relayed.

Streams are relayed as the upstream's bytes, chunk by chunk as they arrive: no parsing, no
re-serialising, so `reasoning_content` deltas, usage chunks, comments and `[DONE]` reach the
client exactly as sent. An error status before the stream begins becomes `UpstreamStatus`
(the client gets that status and body); a failure after it began becomes one
`data: {"error": ...}` event, and the stream ends.

Retries happen only in `open()`, before a byte has gone to the client: on connection
errors and on 429 / 500 / 502 / 503 / 504, with exponential backoff and full jitter, a
429's `Retry-After` honoured (one longer than `retry_max_s` is relayed instead of waited).
An optional `RateLimiter` spaces every attempt toward the upstream.

    upstream = UpstreamClient(base_url, api_key, connect_timeout_s=5, read_timeout_s=600)
    reply = await upstream.open("POST", "/chat/completions", body=payload, stream=True)
    async for chunk in reply.relay(): ...
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import httpx

from app.errors import (
    Overloaded,
    ProxyError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_sse_event,
)
from app.forward_headers import forwarded_headers
from app.rate_limit import RateLimiter
from app.request_context import current_request_headers, current_request_id
from app.upstream_transport import UpstreamTransport

logger = logging.getLogger(__name__)


@dataclass
class UpstreamReply:
    """An upstream response whose status was 2xx and whose body is still to be read."""

    response: httpx.Response

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def media_type(self) -> str:
        return str(self.response.headers.get("content-type", "application/json"))

    async def read(self) -> bytes:
        try:
            return await self.response.aread()
        except httpx.HTTPError as exc:
            raise translate(exc) from exc
        finally:
            await self.response.aclose()

    async def relay(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a failure mid-way ends it with an SSE error event."""
        encoded = self.response.headers.get("content-encoding", "identity") != "identity"
        # An identity body (what `open` asks for) needs no decoder: the raw iterator saves
        # a generator hop and a decode call per chunk.
        pieces = self.response.aiter_bytes() if encoded else self.response.aiter_raw()
        try:
            async for chunk in pieces:
                yield chunk
        except httpx.HTTPError as exc:
            error = translate(exc)
            logger.warning("upstream stream broke", extra={"error": error.message})
            yield error_sse_event(error)
        finally:
            # Shielded: when the client goes away this runs under a cancelled scope, and
            # the upstream connection must be closed all the same, not left to the pool.
            with anyio.CancelScope(shield=True):
                await self.response.aclose()


def translate(exc: httpx.HTTPError) -> ProxyError:
    """httpx's exceptions to ours, at this one edge."""
    if isinstance(exc, httpx.PoolTimeout):
        # Every upstream connection is busy here: local overload, worth a retry later,
        # not an upstream that failed to answer.
        return Overloaded("all upstream connections are busy; retry shortly", retry_after_s=1)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamUnreachable("the upstream closed the connection or answered garbage")
    return UpstreamUnreachable("cannot reach the upstream")


# Statuses worth another attempt: rate limited, or a gateway/server hiccup.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures that mean the request never reached a working upstream. A read timeout is not
# among them: an upstream that stalls would stall again, and the client has waited enough.
RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    base_s: float = 0.5
    max_s: float = 8.0

    def backoff_s(self, retry: int) -> float:
        """Full jitter: uniform in [0, base * 2**retry], capped; spreads replicas apart."""
        return random.uniform(0, min(self.max_s, self.base_s * 2**retry))  # noqa: S311


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UpstreamClient:
    """One pooled, keep-alive HTTP client toward the OpenAI-compatible upstream."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 256,
        keepalive_expiry_s: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        on_retry: Callable[[str], None] | None = None,
        forward_headers: Sequence[str] = (),
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Beside traceparent/tracestate: the client headers an operator lets through.
        self._forward_headers = tuple(forward_headers)
        self._retry = retry or RetryPolicy()
        self._rate_limiter = rate_limiter
        self._on_retry = on_retry or (lambda reason: None)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            # read: the longest silence between two bytes (a reasoning model thinking);
            # pool: how long to wait for a free connection when all are busy.
            timeout=httpx.Timeout(
                # pool: the wait for a free connection once UPSTREAM_MAX_CONNECTIONS are busy
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=30.0,
                pool=connect_timeout_s,
            ),
            trust_env=False,  # no proxy or .netrc from the environment toward the upstream
            # The transport keeps its own pool (httpx ignores `limits` when given one):
            # asyncio protocols and httptools, measured in bench/proxy.py.
            transport=UpstreamTransport(
                max_connections=max_connections, keepalive_expiry_s=keepalive_expiry_s
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """Send a request and wait for the status line; raise for anything but 2xx.
        `extra_headers` are the caller's own; the client's trace context and the
        operator's FORWARD_HEADERS come from the request being served."""
        headers = forwarded_headers(current_request_headers(), self._forward_headers)
        headers |= extra_headers or {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request_id = current_request_id()
        if request_id is not None:  # lets the upstream's logs be joined with ours
            headers["X-Request-ID"] = request_id
        if stream:
            # Compressed SSE would have to be decoded and re-chunked; identity streams as is.
            headers |= {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        retry = 0
        while True:
            outcome, delay_s = await self._attempt(method, path, body, headers, retry)
            if isinstance(outcome, UpstreamReply):
                return outcome
            if delay_s is None:
                raise outcome
            self._on_retry(outcome.code or "error")
            logger.info("retrying upstream", extra={"retry": retry + 1, "reason": outcome.code})
            await asyncio.sleep(delay_s)
            retry += 1

    async def _attempt(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], retry: int
    ) -> tuple[UpstreamReply | ProxyError, float | None]:
        """One try: the reply, or the error and how long to wait before the next try
        (None: do not retry)."""
        if self._rate_limiter is not None:
            await self._rate_limiter.acquire()
        may_retry = retry < self._retry.max_retries
        request = self._client.build_request(method, path, content=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            error = translate(exc)
            error.__cause__ = exc
            retryable = may_retry and isinstance(exc, RETRY_ERRORS)
            return error, self._retry.backoff_s(retry) if retryable else None
        if response.is_success:
            return UpstreamReply(response), None
        try:
            error_body = await response.aread()
        except httpx.HTTPError:
            error_body = b""
        finally:
            await response.aclose()
        retry_after = response.headers.get("retry-after")
        status = UpstreamStatus(
            response.status_code,
            error_body,
            response.headers.get("content-type"),
            retry_after=retry_after,
        )
        if not may_retry or response.status_code not in RETRY_STATUSES:
            return status, None
        asked_s = retry_after_s(retry_after)
        if asked_s is None:
            return status, self._retry.backoff_s(retry)
        # The upstream said how long; a wait longer than we would back off is the
        # client's to decide, so it gets the 429 and the Retry-After.
        return status, asked_s if asked_s <= self._retry.max_s else None
