"""The upstream DeepSeek-R1 API: one shared aiohttp session, retries, and the pool's limit.

Streams are relayed as the upstream's bytes, chunk by chunk as they arrive: no parsing, no
re-serialising, so `reasoning_content` deltas, usage chunks, comments and `[DONE]` reach the
client exactly as sent (`UpstreamResponse.relay`). An error status before the stream begins
becomes `UpstreamStatus` (the client gets that status and body, the upstream key scrubbed
from both); a failure after it began becomes one `data: {"error": ...}` event, and the
stream ends. A 2xx answer to a stream request that is not `text/event-stream` is a 502
`upstream_bad_response`: the client's SDK would read it as an empty stream.

Retries happen only in `open()`, before a byte has gone to the client, and never once the
upstream's answer has begun: on connection errors and on 429 / 500 / 502 / 503 / 504, with
exponential backoff and full jitter, a 429's `Retry-After` honoured (one longer than
`retry_max_s` is relayed instead of waited). A pooled connection that the upstream had
closed while it idled (it fails before any response byte) is retried at once on another,
counted as `stale_connection`, without backoff. An optional `RateLimiter` spaces every
attempt toward the upstream.

    upstream = UpstreamClient(base_url, api_key, connect_timeout_s=5, read_timeout_s=600)
    response = await upstream.open("POST", "/chat/completions", body=payload, stream=True)
    async for chunk in response.relay(): ...
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from app.errors import (
    Overloaded,
    ProxyError,
    UpstreamBadResponse,
    UpstreamStatus,
    UpstreamTlsError,
)
from app.observability.request_context import current_request_headers, current_request_id
from app.upstream.forward_headers import forwarded_headers
from app.upstream.rate_limit import RateLimiter
from app.upstream.response import UpstreamResponse
from app.upstream.session import (
    UPSTREAM_ERRORS,
    Attempt,
    EgressProxy,
    TlsOptions,
    build_session,
    egress_proxy,
    is_retryable,
    is_stale,
    is_tls_failure,
    ssl_context,
    translate,
)

logger = logging.getLogger(__name__)

# Statuses worth another attempt: rate limited, or a gateway/server hiccup.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Pooled connections found closed, in a row, retried at once before the usual backoff.
MAX_STALE_RETRIES = 3
STALE = "stale_connection"
REDACTED = "[redacted]"


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


# A failure this soon after sending, on a reused connection, is a stale connection.
STALE_WINDOW_S = 1.0
# The most of an upstream error body read (relayed, scrubbed, to the client).
ERROR_BODY_MAX_BYTES = 64 * 1024


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
        max_body_bytes: int = 32 * 1024 * 1024,
        tls: TlsOptions | None = None,
        proxy: str = "",
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        on_retry: Callable[[str], None] | None = None,
        forward_headers: Sequence[str] = (),
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # Beside traceparent/tracestate: the client headers an operator lets through.
        self._forward_headers = tuple(forward_headers)
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._retry = retry or RetryPolicy()
        self._rate_limiter = rate_limiter
        self._on_retry = on_retry or (lambda reason: None)
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._max_body_bytes = max_body_bytes
        # Built now, so a bad CA file, certificate or proxy stops the start, not a request.
        # (Loading a CA bundle takes some 20 ms of CPU: once, here, not in a request.)
        self._ssl_context = ssl_context(tls or TlsOptions())
        self.proxy: EgressProxy | None = egress_proxy(self._base_url, proxy)
        # Requests in flight, at most one per connection: past that a request waits up to
        # the connect timeout for a slot, then is refused as local overload (503).
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _session_now(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the loop that serves requests.
        if self._session is None:
            self._session = build_session(
                max_connections=self._max_connections,
                keepalive_expiry_s=self._keepalive_expiry_s,
                connect_timeout_s=self._connect_timeout_s,
                ssl_context=self._ssl_context,
                headers=self._headers,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send a request and wait for the status line; raise for anything but 2xx (and,
        for a stream, for anything but an event stream). `extra_headers` are the caller's
        own; the client's trace context and the operator's FORWARD_HEADERS come from the
        request being served."""
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
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base_url + path)
        retry = 0
        stale = 0
        while True:
            outcome, delay_s, reason = await self._attempt(
                method, url, body, headers, retry, stale_allowed=stale < MAX_STALE_RETRIES
            )
            if isinstance(outcome, UpstreamResponse):
                if stream and not _is_event_stream(outcome):
                    media_type = outcome.media_type
                    await outcome.aclose()
                    raise UpstreamBadResponse(
                        f"the upstream answered a stream request with {media_type!r}, "
                        "not text/event-stream"
                    )
                return outcome
            if delay_s is None:
                if not isinstance(outcome, UpstreamStatus | UpstreamTlsError):  # TLS: logged
                    logger.warning(
                        "upstream failed",
                        extra={"upstream": f"{url.host}:{url.port}", "error": outcome.message},
                    )
                raise outcome
            self._on_retry(reason)
            logger.info("retrying upstream", extra={"retry": retry + 1, "reason": reason})
            if reason == STALE:
                stale += 1
                continue  # at once: the upstream never saw the request
            await asyncio.sleep(delay_s)
            retry += 1

    async def _attempt(
        self,
        method: str,
        url: URL,
        body: bytes | None,
        headers: dict[str, str],
        retry: int,
        *,
        stale_allowed: bool,
    ) -> tuple[UpstreamResponse | ProxyError, float | None, str]:
        """One try: the response, or the error, how long to wait before the next try
        (None: do not retry) and the reason counted for that retry."""
        if self._rate_limiter is not None:
            await self._rate_limiter.acquire()
        await self._take_slot()
        session = self._session_now()
        attempt = Attempt()
        proxy = self.proxy
        sent_at = time.monotonic()
        try:
            # The read timeout until the headers; past them, each body's SilenceWatch.
            async with asyncio.timeout(self._read_timeout_s):
                raw = await session.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    proxy=proxy.url if proxy is not None else None,
                    proxy_headers=proxy.headers if proxy is not None else None,
                    trace_request_ctx=attempt,
                )
        except UPSTREAM_ERRORS as exc:
            self._slots.release()
            error = translate(exc, host=f"{url.host}:{url.port}")
            error.__cause__ = exc
            if is_tls_failure(exc):
                logger.error("TLS with the upstream failed", extra={"error": error.message})
                return error, None, ""
            # A connection the upstream closed while it idled fails on the first read. One
            # that drops later (a middlebox's idle cut while a long answer is computed) may
            # have reached the upstream: not sent again at once, and not for free.
            quick = time.monotonic() - sent_at < STALE_WINDOW_S
            if stale_allowed and quick and is_stale(exc, attempt):
                return error, 0.0, STALE
            retryable = retry < self._retry.max_retries and is_retryable(exc)
            return error, self._retry.backoff_s(retry) if retryable else None, error.label
        except BaseException:
            self._slots.release()
            raise
        response = UpstreamResponse(
            raw,
            release_slot=self._slots.release,
            max_body_bytes=self._max_body_bytes,
            read_timeout_s=self._read_timeout_s,
            scrub=self._scrub_bytes,
        )
        if 200 <= raw.status < 300:
            return response, None, ""
        try:
            # An error answer is a short message: capped, and read within one read timeout
            # in all (a trickling error body would otherwise hold a connection slot).
            async with asyncio.timeout(self._read_timeout_s):
                error_body = await response.read(max_bytes=ERROR_BODY_MAX_BYTES)
        except (ProxyError, TimeoutError):
            await response.aclose()
            error_body = b""
        retry_after = raw.headers.get("Retry-After")
        content_type = raw.headers.get("Content-Type")
        status = UpstreamStatus(
            raw.status,
            error_body,  # scrubbed by `read`
            self._scrub(content_type) if content_type else None,
            retry_after=self._scrub(retry_after) if retry_after else None,
        )
        if retry >= self._retry.max_retries or raw.status not in RETRY_STATUSES:
            return status, None, ""
        reason = status.code or "error"
        asked_s = retry_after_s(retry_after)
        if asked_s is None:
            return status, self._retry.backoff_s(retry), reason
        # The upstream said how long; a wait longer than we would back off is the
        # client's to decide, so it gets the 429 and the Retry-After.
        return status, asked_s if asked_s <= self._retry.max_s else None, reason

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: no timer
            return
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            # Every upstream connection is busy here: local overload, worth a retry
            # later, not an upstream that failed to answer.
            raise Overloaded(
                "all upstream connections are busy; retry shortly", retry_after_s=1
            ) from None

    # The upstream key never reaches a client, whatever an upstream echoes back: the
    # value is replaced in every body read whole and every error header relayed
    # (`Bearer <key>` with it). A stream is relayed as it comes, chunk by chunk.
    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED) if self._api_key else text

    def _scrub_bytes(self, data: bytes) -> bytes:
        return data.replace(self._api_key.encode(), REDACTED.encode()) if self._api_key else data


def _is_event_stream(response: UpstreamResponse) -> bool:
    return response.media_type.split(";", 1)[0].strip().lower() == "text/event-stream"
