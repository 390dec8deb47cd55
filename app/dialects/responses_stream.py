"""The upstream's Chat Completions SSE stream, translated into Responses' typed events.

    stream = ResponsesStream(response)        # the `response_object(...)` of the request
    yield stream.start()                      # response.created, response.in_progress
    async for chunk in upstream_chunks:       # any framing: events may span chunks
        if events := stream.feed(chunk):
            yield events
    yield stream.finish()                     # completed / incomplete / failed, exactly once

Each output item is opened (`response.output_item.added`, its content part), fed deltas
(`response.reasoning_text.delta`, `response.output_text.delta`,
`response.function_call_arguments.delta`) and closed (`.done` events) in order: reasoning from
`reasoning_content`, then the message from `content`, then one `function_call` per tool call.
Every event carries the stream's `sequence_number`. An upstream error event (the relay writes
one when the upstream cut the stream or went silent) becomes an `error` event and
`response.failed`; a stream that ends without `[DONE]` and without an error is failed too.
Every `feed` returns whole events only, so the relay's keep-alive comments (`: ping`) land
between them, and SSE clients ignore them.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.dialects.responses_output import (
    finish,
    function_call_item,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    usage_of,
)
from app.dialects.sse import SseData

_REASONING = "reasoning"
_MESSAGE = "message"


class _Item:
    """One output item being streamed: its place, its id and the text gathered so far."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "pieces")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind
        self.index = index
        self.id = item_id
        self.pieces: list[str] = []
        self.call_id = ""
        self.name = ""


class ResponsesStream:
    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self._sequence = 0
        self._events = SseData()
        self._open: _Item | None = None  # the reasoning or message item being streamed
        self._calls: dict[int, _Item] = {}  # tool calls by the upstream's index, still open
        self._finish_reason: str | None = None
        self._done = False
        self.ended = False

    # ---- the stream's frame -------------------------------------------------------------

    def start(self) -> bytes:
        return self._event("response.created", {"response": self.response}) + self._event(
            "response.in_progress", {"response": self.response}
        )

    def feed(self, chunk: bytes) -> bytes:
        """The events for the upstream bytes received; b"" until an upstream event is whole."""
        if self.ended:
            return b""
        out: list[bytes] = []
        for payload in self._events.feed(chunk):
            self._data(payload, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """The stream's last events: `response.completed` (or `.incomplete`) after `[DONE]`,
        `response.failed` if the upstream stream ended without it. b"" once ended."""
        if self.ended:
            return b""
        if not self._done and self._finish_reason is None:
            return self.fail(
                "server_error", "upstream_stream_truncated", "the upstream stream ended early"
            )
        out: list[bytes] = []
        self._close_all(out)
        finish(self.response, self._finish_reason)
        self.ended = True
        status = self.response["status"]
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": self.response}))
        return b"".join(out)

    def fail(self, code: str, proxy_code: str | None, message: str) -> bytes:
        """An `error` event and `response.failed` with the output so far; ends the stream."""
        if self.ended:
            return b""
        self.ended = True
        for item in self.response["output"]:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        self._fill_open_items()
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        error = {"code": proxy_code or code, "message": message, "param": None}
        return self._event("error", error) + self._event(
            "response.failed", {"response": self.response}
        )

    # ---- upstream events ----------------------------------------------------------------

    def _data(self, payload: bytes, out: list[bytes]) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # not JSON: nothing a Responses client could use
        if not isinstance(event, dict):
            return
        error = event.get("error")
        if error is not None:
            out.append(self._upstream_error(error))
            return
        if event.get("usage"):
            self.response["usage"] = usage_of(event["usage"])
        choices = event.get("choices")
        if not choices:
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning:
            self._text(_REASONING, reasoning, out)
        content = delta.get("content")
        if content:
            self._text(_MESSAGE, content, out)
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]

    def _upstream_error(self, error: Any) -> bytes:
        details = error if isinstance(error, dict) else {"message": str(error)}
        proxy_code = details.get("code")
        message = str(details.get("message") or "the upstream stream failed")
        code = (
            "rate_limit_exceeded"
            if proxy_code in ("429", "rate_limit_exceeded")
            else "server_error"
        )
        return self.fail(code, str(proxy_code) if proxy_code else None, message)

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != kind:
            item = self._open_text(kind, out)
        item.pieces.append(text)
        name = (
            "response.reasoning_text.delta" if kind == _REASONING else "response.output_text.delta"
        )
        fields: dict[str, Any] = {
            "item_id": item.id,
            "output_index": item.index,
            "content_index": 0,
            "delta": text,
        }
        if kind == _MESSAGE:
            fields["logprobs"] = []
        out.append(self._event(name, fields))

    def _open_text(self, kind: str, out: list[bytes]) -> _Item:
        self._close_all(out)
        index = len(self.response["output"])
        if kind == _REASONING:
            added = reasoning_item("")
            added["content"] = []
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            added = message_item("", status="in_progress")
            added["content"] = []
            part = output_text("")
        added["status"] = "in_progress"
        item = self._open = _Item(kind, index, added["id"])
        self.response["output"].append(added)
        out.append(
            self._event("response.output_item.added", {"output_index": index, "item": added})
        )
        out.append(
            self._event(
                "response.content_part.added",
                {"item_id": item.id, "output_index": index, "content_index": 0, "part": part},
            )
        )
        return item

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        key = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(key)
        if item is None:
            if self._open is not None:
                self._close(self._open, out)
                self._open = None
            index = len(self.response["output"])
            item = _Item("function_call", index, new_id("fc"))
            item.call_id = str(call.get("id") or new_id("call"))
            item.name = str(function.get("name") or "")
            self._calls[key] = item
            added = function_call_item(item.call_id, item.name, "", item.id, status="in_progress")
            self.response["output"].append(added)
            out.append(
                self._event("response.output_item.added", {"output_index": index, "item": added})
            )
        elif function.get("name"):
            item.name += function["name"]
        arguments = function.get("arguments")
        if arguments:
            item.pieces.append(arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": item.id, "output_index": item.index, "delta": arguments},
                )
            )

    # ---- closing items ------------------------------------------------------------------

    def _close_all(self, out: list[bytes]) -> None:
        if self._open is not None:
            self._close(self._open, out)
            self._open = None
        for item in self._calls.values():
            self._close(item, out)
        self._calls.clear()

    def _close(self, item: _Item, out: list[bytes]) -> None:
        text = "".join(item.pieces)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == _REASONING:
            done = reasoning_item(text, item.id)
            out.append(
                self._event(
                    "response.reasoning_text.done", {**where, "content_index": 0, "text": text}
                )
            )
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            out.append(
                self._event(
                    "response.content_part.done", {**where, "content_index": 0, "part": part}
                )
            )
        elif item.kind == _MESSAGE:
            done = message_item(text, item.id)
            out.append(
                self._event(
                    "response.output_text.done",
                    {**where, "content_index": 0, "text": text, "logprobs": []},
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    {**where, "content_index": 0, "part": output_text(text)},
                )
            )
        else:
            done = function_call_item(item.call_id, item.name, text, item.id)
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    {**where, "name": item.name, "arguments": text},
                )
            )
        self.response["output"][item.index] = done
        out.append(
            self._event("response.output_item.done", {"output_index": item.index, "item": done})
        )

    def _fill_open_items(self) -> None:
        """A failed stream's response shows what had arrived of each unfinished item."""
        items = [self._open] if self._open is not None else []
        for item in [*items, *self._calls.values()]:
            text = "".join(item.pieces)
            if item.kind == _REASONING:
                done = reasoning_item(text, item.id)
            elif item.kind == _MESSAGE:
                done = message_item(text, item.id)
            else:
                done = function_call_item(item.call_id, item.name, text, item.id)
            done["status"] = "incomplete"
            self.response["output"][item.index] = done
        self._open = None
        self._calls.clear()

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        sequence = self._sequence
        self._sequence = sequence + 1
        data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
