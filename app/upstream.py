"""The upstream DeepSeek-R1 API: one shared httpx client, errors translated once, SSE relayed.

Streams are relayed as the upstream's bytes, chunk by chunk as they arrive: no parsing, no
re-serialising, so `reasoning_content` deltas, usage chunks, comments and `[DONE]` reach the
client exactly as sent. An error status before the stream begins becomes `UpstreamStatus`
(the client gets that status and body); a failure after it began becomes one
`data: {"error": ...}` event, and the stream ends.

    upstream = UpstreamClient(base_url, api_key, connect_timeout_s=5, read_timeout_s=600)
    reply = await upstream.open("POST", "/chat/completions", body=payload, stream=True)
    async for chunk in reply.relay(): ...
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from app.errors import (
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_sse_event,
)
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
        try:
            async for chunk in self.response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            error = translate(exc)
            logger.warning("upstream stream broke", extra={"error": error.message})
            yield error_sse_event(error)
        finally:
            await self.response.aclose()


def translate(exc: httpx.HTTPError) -> UpstreamError:
    """httpx's exceptions to ours, at this one edge."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamUnreachable("the upstream closed the connection or answered garbage")
    return UpstreamUnreachable("cannot reach the upstream")


class UpstreamClient:
    """One pooled, keep-alive HTTP client toward the OpenAI-compatible upstream."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 512,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            trust_env=False,
            # Our own transport: httpcore's per-chunk cost dominated the relay (issue #8).
            transport=UpstreamTransport(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open(
        self, method: str, path: str, *, body: bytes | None = None, stream: bool = False
    ) -> UpstreamReply:
        """Send a request and wait for the status line; raise for anything but 2xx."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if stream:
            # Compressed SSE would have to be decoded and re-chunked; identity streams as is.
            headers |= {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        request = self._client.build_request(method, path, content=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise translate(exc) from exc
        if response.is_success:
            return UpstreamReply(response)
        try:
            error_body = await response.aread()
        except httpx.HTTPError:
            error_body = b""
        finally:
            await response.aclose()
        raise UpstreamStatus(response.status_code, error_body, response.headers.get("content-type"))
