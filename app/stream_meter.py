"""Measures a relayed SSE stream without touching its bytes.

Every chunk leaves exactly as it came. Per chunk the meter does only cheap byte searches:
a regex for the first token until it has been seen, and a search for `"usage"`; the few
chunks from the first usage sighting on are kept (at most 16 KiB) and parsed once, when the
stream ends. It observes time to first token, the stream's duration and outcome, the
upstream's total time and the tokens the upstream reported.

    chunks = metered_stream(reply.relay(), metrics, sent_at=t0, headers_at=t1)
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.metrics import Metrics
from app.request_context import note_fact

# A non-empty `content` or `reasoning_content` string: the first token of text. The role
# chunk R1 sends first (`"content": null, "reasoning_content": ""`) does not match.
_TOKEN = re.compile(rb'"(?:reasoning_)?content"\s*:\s*"[^"]')
_USAGE = b'"usage"'
_USAGE_TAIL_BYTES = 16 * 1024
_ERROR_EVENT = b'data: {"error"'


class UsageReader:
    """Finds the last `usage` object in a stream from the chunks that mention it."""

    def __init__(self) -> None:
        self._previous = b""
        self._kept: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        if self._kept is not None:
            self._kept = (self._kept + chunk)[-_USAGE_TAIL_BYTES:]
        # The second search catches `"usage"` split across two chunks.
        elif _USAGE in chunk or _USAGE in self._previous[-8:] + chunk[:8]:
            self._kept = (self._previous + chunk)[-_USAGE_TAIL_BYTES:]
        self._previous = chunk

    def usage(self) -> dict[str, Any] | None:
        if self._kept is None:
            return None
        found = None
        for line in self._kept.split(b"\n"):
            if not line.startswith(b"data:") or _USAGE not in line:
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue  # the cut-off start of the kept tail
            if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                found = event["usage"]
        return found


def count_tokens(metrics: Metrics, usage: dict[str, Any] | None) -> None:
    """Count the usage's prompt and completion tokens, and put them in the request's log."""
    if usage is None:
        return
    for kind in ("prompt", "completion"):
        tokens = usage.get(f"{kind}_tokens")
        if isinstance(tokens, int) and tokens >= 0:
            metrics.tokens.labels(kind=kind).inc(tokens)
            note_fact(f"{kind}_tokens", tokens)


async def metered_stream(
    chunks: AsyncIterator[bytes], metrics: Metrics, *, sent_at: float, headers_at: float
) -> AsyncIterator[bytes]:
    """`chunks`, relayed as they are, measured on the way."""
    usage = UsageReader()
    first_token_seen = False
    last = b""
    outcome = "cancelled"  # unless the loop below ends by itself
    try:
        async for chunk in chunks:
            if not first_token_seen and _TOKEN.search(chunk):
                first_token_seen = True
                ttft = time.perf_counter() - sent_at
                metrics.upstream_ttft.observe(ttft)
                note_fact("ttft_ms", round(ttft * 1000, 1))
            usage.feed(chunk)
            last = chunk
            yield chunk
        outcome = "error" if last.startswith(_ERROR_EVENT) else "complete"
    finally:
        ended = time.perf_counter()
        metrics.stream_duration.labels(outcome=outcome).observe(ended - headers_at)
        if outcome != "cancelled":
            metrics.upstream_duration.labels(mode="stream").observe(ended - sent_at)
        note_fact("stream", outcome)
        count_tokens(metrics, usage.usage())
        # Close the relay now, so the upstream connection is released with the client's.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
