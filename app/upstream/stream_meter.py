"""Measures a relayed SSE stream without touching its bytes.

Every chunk leaves exactly as it came. Per chunk the meter does only cheap byte searches:
a regex for the first token until it has been seen, and a search for `"usage"`; the few
chunks from the first usage sighting on are kept (at most 16 KiB) and parsed once, when the
stream ends. It observes time to first token, the stream's duration and outcome, the
upstream's total time and the tokens the upstream reported.

It is told, not left to guess: the relay (`UpstreamResponse.relay`) shows it every chunk and,
once, how the stream ended.

    meter = StreamMeter(metrics, sent_at=t0, headers_at=t1)
    async for chunk in response.relay(meter): ...   # meter.see(chunk) per chunk
    # ... and response.aclose() calls meter.end(outcome) once
"""

from __future__ import annotations

import collections
import re
import time
from enum import StrEnum
from typing import Any

import orjson

from app.metrics import Metrics
from app.observability.request_context import note_fact

# A non-empty `content` or `reasoning_content` string: the first token of text. The role
# chunk R1 sends first (`"content": null, "reasoning_content": ""`) does not match.
_TOKEN = re.compile(rb'"(?:reasoning_)?content"\s*:\s*"[^"]')
_USAGE = b'"usage"'
_USAGE_TAIL_BYTES = 16 * 1024


class StreamOutcome(StrEnum):
    """How a relayed stream ended: the `outcome` of clip_proxy_stream_duration_seconds."""

    complete = "complete"  # `data: [DONE]` arrived
    truncated = "truncated"  # the upstream ended it early: reset, FIN, a cut in the framing
    error = "error"  # the upstream went silent past the read timeout
    cancelled = "cancelled"  # the client left, or the relay was closed before its end


class UsageReader:
    """Finds the last `usage` object in a stream from the chunks that mention it."""

    def __init__(self) -> None:
        self._previous = b""
        # From the first `"usage"` on, the latest chunks (at least 16 KiB of them), joined
        # once at the end: OpenAI-style streams say `"usage": null` in every chunk, and
        # re-slicing a bytes tail per chunk would copy 16 KiB for each.
        self._tail: collections.deque[bytes] | None = None
        self._tail_bytes = 0

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        if tail is None:
            # The second search catches `"usage"` split across two chunks.
            if _USAGE not in chunk and _USAGE not in self._previous[-8:] + chunk[:8]:
                self._previous = chunk
                return
            tail = self._tail = collections.deque([self._previous])
            self._tail_bytes = len(self._previous)
        tail.append(chunk)
        self._tail_bytes += len(chunk)
        while len(tail) > 1 and self._tail_bytes - len(tail[0]) >= _USAGE_TAIL_BYTES:
            self._tail_bytes -= len(tail.popleft())
        self._previous = chunk

    def usage(self) -> dict[str, Any] | None:
        if self._tail is None:
            return None
        found = None
        for line in b"".join(self._tail).split(b"\n"):
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


class StreamMeter:
    """Measures one relayed stream: `see` every chunk as it leaves, `end` it once."""

    def __init__(
        self, metrics: Metrics, *, sent_at: float, headers_at: float, dialect: str = "chat"
    ) -> None:
        self._metrics = metrics
        self._dialect = dialect
        self._sent_at = sent_at
        self._headers_at = headers_at
        self._usage = UsageReader()
        self._first_token_seen = False
        self._ended = False

    def see(self, chunk: bytes) -> None:
        if not self._first_token_seen and _TOKEN.search(chunk):
            self._first_token_seen = True
            ttft = time.perf_counter() - self._sent_at
            self._metrics.upstream_ttft.observe(ttft)
            note_fact("ttft_ms", round(ttft * 1000, 1))
        self._usage.feed(chunk)

    def end(self, outcome: StreamOutcome) -> None:
        if self._ended:
            return
        self._ended = True
        ended = time.perf_counter()
        stream_duration = self._metrics.stream_duration
        stream_duration.labels(outcome=outcome.value, dialect=self._dialect).observe(
            ended - self._headers_at
        )
        if outcome is not StreamOutcome.cancelled:
            self._metrics.upstream_duration.labels(mode="stream").observe(ended - self._sent_at)
        note_fact("stream", outcome.value)
        count_tokens(self._metrics, self._usage.usage())
