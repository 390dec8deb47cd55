"""One upstream answer with a 2xx status, whose body is still to come: the one object that
owns the aiohttp response and its pool slot, and releases both once.

    response = await upstream.open("POST", "/chat/completions", body=payload, stream=True)
    try:
        async for chunk in response.relay(meter):   # or: body = await response.read()
            ...
    finally:
        await response.aclose()                     # idempotent; the relay calls it too

A relayed stream is complete when `data: [DONE]` arrived. Any other end (a reset, a FIN, a
cut in any framing, a clean close without [DONE]) appends one `data: {"error": ...}` event
with code `upstream_stream_truncated`; a silence past the read timeout one with
`upstream_timeout`. How the stream ended is the response's `outcome`, set where it is known
and handed to the meter, never guessed from the bytes afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from app.errors import (
    ProxyError,
    UpstreamResponseTooLarge,
    UpstreamStreamTruncated,
    error_sse_event,
)
from app.upstream.session import UPSTREAM_ERRORS, translate, truncated
from app.upstream.stream_meter import StreamMeter, StreamOutcome

logger = logging.getLogger(__name__)

# The end of an OpenAI-style stream; searched in the last bytes seen, so a [DONE] split
# across two reads still counts.
_DONE = re.compile(rb"(?:^|\n)data: ?\[DONE\]\s*$")
_TAIL_BYTES = 32
_DONE_ENDS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data:[DONE]\n\n")


class UpstreamResponse:
    def __init__(
        self,
        raw: aiohttp.ClientResponse,
        *,
        release_slot: Callable[[], None],
        max_body_bytes: int,
        read_timeout_s: float,
        scrub: Callable[[bytes], bytes] = lambda data: data,
    ) -> None:
        self._raw = raw
        # What `read` hands on never carries the upstream key, whatever the upstream echoed
        # (an error quoting the request, a debugging endpoint, a misconfigured base URL).
        self._scrub = scrub
        self._release_slot = release_slot
        self._max_body_bytes = max_body_bytes
        self._silence = SilenceWatch(raw.content, read_timeout_s)
        self._meter: StreamMeter | None = None
        self._read_to_end = False
        self._closed = False
        self.outcome: StreamOutcome | None = None

    @property
    def status_code(self) -> int:
        return self._raw.status

    @property
    def media_type(self) -> str:
        return self._raw.headers.get("Content-Type", "application/json")

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole body, decoded, at most `max_bytes` (default `max_body_bytes`) of it (a
        gzip bomb stops there)."""
        limit = self._max_body_bytes if max_bytes is None else max_bytes
        content = self._raw.content
        pieces: list[bytes] = []
        size = 0
        silence = self._silence.start()
        try:
            while True:
                silence.waiting = True
                chunk = await content.readany()
                silence.waiting = False
                if not chunk:
                    break
                silence.heard()
                size += len(chunk)
                if size > limit:
                    raise UpstreamResponseTooLarge(
                        f"the upstream's answer is larger than {limit} bytes "
                        "(CLIP_PROXY_UPSTREAM_MAX_BODY_BYTES)"
                    )
                pieces.append(chunk)
            self._read_to_end = True
        except UPSTREAM_ERRORS as exc:
            raise translate(exc) from exc
        finally:
            await self.aclose()
        return self._scrub(b"".join(pieces))

    async def relay(self, meter: StreamMeter | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives (whatever has arrived, in one piece), each chunk shown to
        `meter`; an early end appends one SSE error event. Releases the response at its end."""
        self._meter = meter
        content = self._raw.content
        see = meter.see if meter is not None else None
        tail = b""
        error: ProxyError | None = None
        silence = self._silence.start()
        try:
            while True:
                silence.waiting = True
                chunk = await content.readany()
                silence.waiting = False
                if not chunk:
                    break
                silence.heard()
                if see is not None:
                    see(chunk)
                if self.outcome is None:
                    # The last bytes seen, for [DONE]: no copy of a chunk longer than that.
                    tail = chunk if len(chunk) >= _TAIL_BYTES else (tail + chunk)[-_TAIL_BYTES:]
                    if chunk.endswith(_DONE_ENDS):
                        # Complete now, before the client has the bytes: whatever follows
                        # (the framing's end, or the client hanging up at once) changes
                        # nothing for the answer.
                        self._complete()
                yield chunk
            self._read_to_end = True
            if self.outcome is None and not _DONE.search(tail):
                error = truncated()
        except UPSTREAM_ERRORS as exc:
            if self.outcome is None:
                error = translate(exc, in_stream=True)
                error.__cause__ = exc
        if error is None:
            self._complete()
        else:
            truncated_ = isinstance(error, UpstreamStreamTruncated)
            self.outcome = StreamOutcome.truncated if truncated_ else StreamOutcome.error
            logger.warning("upstream stream broke", extra={"error": error.message})
            yield error_sse_event(error)
        await self.aclose()

    def _complete(self) -> None:
        if self.outcome is None:
            self.outcome = StreamOutcome.complete
            if self._meter is not None:
                self._meter.end(StreamOutcome.complete)

    async def aclose(self) -> None:
        """Release once: the connection back to the pool only when its response was read to
        its end (else closed, so the next request can never read this one's leftovers), the
        pool slot, and the stream's outcome to its meter."""
        if self._closed:
            return
        self._closed = True
        self._silence.stop()
        if self._meter is not None:
            self._meter.end(self.outcome or StreamOutcome.cancelled)
        if self._read_to_end:
            self._raw.release()
        else:
            self._raw.close()
        self._release_slot()


class SilenceWatch:
    """The read timeout on a body: the longest silence while the reader waits for bytes.

    Without a timer per chunk: each chunk only notes the time; one timer, re-armed from
    that note when it fires, ends the body with `SocketTimeoutError` once the reader has
    waited `timeout_s` with nothing new. (aiohttp's own `sock_read` moves a timer on every
    read from the socket, which measurably cost CPU per relayed chunk; bench/results/
    upstream-aiohttp-run3/.)"""

    def __init__(self, content: aiohttp.StreamReader, timeout_s: float) -> None:
        self._content = content
        self._timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._clock = time.monotonic
        self.last_heard = 0.0
        self.waiting = False

    def start(self) -> SilenceWatch:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self.last_heard = loop.time()
        self._timer = loop.call_at(self.last_heard + self._timeout_s, self._check)
        return self

    def heard(self) -> None:
        self.last_heard = self._clock()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._clock()
        due = self.last_heard + self._timeout_s
        if self.waiting and now >= due:
            self._timer = None
            self._content.set_exception(
                aiohttp.SocketTimeoutError("the upstream went silent for too long")
            )
            return
        # Bytes came meanwhile, or the reader is busy handing a chunk on: look again later.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(max(due, now + 0.05), self._check)
