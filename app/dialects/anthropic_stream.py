"""The upstream's Chat Completions SSE stream, translated into Anthropic's Messages events.

    stream = MessagesStream(message_object(id, model), stop_sequences)
    yield stream.start()                      # message_start
    async for chunk in upstream_chunks:       # any framing: events may span chunks
        if events := stream.feed(chunk):
            yield events
    yield stream.finish()                     # message_delta + message_stop, or an error

Content blocks are opened (`content_block_start`), fed (`content_block_delta` with
`thinking_delta`, `text_delta`, `input_json_delta`) and closed (`content_block_stop`) in
order: thinking from `reasoning_content`, text from `content`, one `tool_use` per tool call.
`message_delta` carries the stop reason and usage (the upstream's last chunk has it), then
`message_stop`. An upstream error event (the relay writes one when the upstream cut the
stream or went silent), or a stream that ends without `[DONE]` and without a finish reason,
ends in Anthropic's `error` event, never silently. `feed` returns whole events only, so the
keep-alive (`PING`, Anthropic's own `ping` event) lands between them.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.dialects.anthropic_output import (
    stop_reason_of,
    text_block,
    thinking_block,
    tool_use_block,
    usage_of,
)
from app.dialects.sse import SseData

PING = b'event: ping\ndata: {"type":"ping"}\n\n'

_THINKING = "thinking"
_TEXT = "text"
_TOOL = "tool_use"


class MessagesStream:
    def __init__(self, message: dict[str, Any], stop_sequences: list[str] | None = None) -> None:
        self.message = message
        self._stop_sequences = stop_sequences
        self._events = SseData()
        self._index = -1  # the open block's index
        self._kind: str | None = None  # the open block's kind
        self._calls: dict[int, int] = {}  # the upstream's tool call index -> block index
        self._finish_reason: str | None = None
        self._stop: str | None = None
        self._usage: Any = None
        self._done = False
        self.ended = False

    def start(self) -> bytes:
        return _event("message_start", {"type": "message_start", "message": self.message})

    def feed(self, chunk: bytes) -> bytes:
        """The events for the upstream bytes received; b"" until an upstream event is whole."""
        if self.ended:
            return b""
        out: list[bytes] = []
        for payload in self._events.feed(chunk):
            self._data(payload, out)
            if self.ended:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """`message_delta` and `message_stop` after `[DONE]`; an `error` event if the upstream
        stream ended without it. b"" once ended."""
        if self.ended:
            return b""
        if not self._done and self._finish_reason is None:
            return self.fail("api_error", "the upstream stream ended early")
        out: list[bytes] = []
        self._close(out)
        self.ended = True
        reason, sequence = stop_reason_of(self._finish_reason, self._stop, self._stop_sequences)
        usage = usage_of(self._usage)
        self.message.update(stop_reason=reason, stop_sequence=sequence, usage=usage)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        }
        out.append(_event("message_delta", delta))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def fail(self, error_type: str, message: str) -> bytes:
        """Anthropic's `error` event; ends the stream."""
        if self.ended:
            return b""
        self.ended = True
        error = {"type": "error", "error": {"type": error_type, "message": message}}
        return _event("error", error)

    # ---- upstream events ----------------------------------------------------------------

    def _data(self, payload: bytes, out: list[bytes]) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # not JSON: nothing an Anthropic client could use
        if not isinstance(event, dict):
            return
        error = event.get("error")
        if error is not None:
            out.append(self._upstream_error(error))
            return
        if event.get("usage"):
            self._usage = event["usage"]
        choices = event.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning:
            self._text(_THINKING, reasoning, out)
        content = delta.get("content")
        if content:
            self._text(_TEXT, content, out)
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
            stop = choice.get("stop_reason")
            self._stop = stop if isinstance(stop, str) else None

    def _upstream_error(self, error: Any) -> bytes:
        details = error if isinstance(error, dict) else {"message": str(error)}
        code = str(details.get("code") or "")
        message = str(details.get("message") or "the upstream stream failed")
        if code in ("429", "rate_limit_exceeded"):
            kind = "rate_limit_error"
        elif code in ("503", "529", "overloaded") or details.get("type") == "overloaded_error":
            kind = "overloaded_error"
        else:
            kind = "api_error"
        return self.fail(kind, message)

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        if self._kind != kind:
            self._open(kind, thinking_block("") if kind == _THINKING else text_block(""), out)
        delta = (
            {"type": "thinking_delta", "thinking": text}
            if kind == _THINKING
            else {"type": "text_delta", "text": text}
        )
        out.append(_delta(self._index, delta))

    def _tool_call(self, call: Any, out: list[bytes]) -> None:
        if not isinstance(call, dict):
            return
        key = call.get("index", 0)
        function = call.get("function") or {}
        index = self._calls.get(key)
        if index is None:
            call_id = str(call.get("id") or f"toolu_{len(self._calls)}")
            block = tool_use_block(call_id, str(function.get("name") or ""), {})
            self._open(_TOOL, block, out)
            index = self._calls[key] = self._index
        arguments = function.get("arguments")
        if arguments:
            if index != self._index:
                return  # interleaved calls: Anthropic streams one block at a time
            out.append(_delta(index, {"type": "input_json_delta", "partial_json": arguments}))

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._index += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(_event("content_block_start", start))

    def _close(self, out: list[bytes]) -> None:
        if self._kind is not None:
            stop = {"type": "content_block_stop", "index": self._index}
            out.append(_event("content_block_stop", stop))
            self._kind = None


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
