"""The Responses stream translator on its own: whatever the framing of the upstream's bytes,
the same typed events, each one valid by the `openai` SDK's own event types; every stream
ends in exactly one of completed, incomplete or failed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from app.dialects.responses import ResponsesRequest
from app.dialects.responses_output import response_object
from app.dialects.responses_stream import ResponsesStream
from tests.upstream_server import chunk_event, r1_events, stream_events, tool_call_events

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def wire(events: list[str], newline: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + event.encode() + newline + newline for event in events)


def translate(pieces: list[bytes]) -> list[dict[str, Any]]:
    stream = ResponsesStream(response_object(ResponsesRequest(input="hi"), "resp_1", 1, "m"))
    out = stream.start() + b"".join(stream.feed(piece) for piece in pieces) + stream.finish()
    events = []
    for block in out.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        event = orjson.loads(data[len(b"data: ") :])
        assert name == b"event: " + event["type"].encode()
        EVENTS.validate_python(event)  # the SDK's own type for this event
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event["type"] in TERMINAL for event in events].count(True) == 1
    assert events[-1]["type"] in TERMINAL
    return events


def normalised(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without the random item ids."""
    text = orjson.dumps(events).decode()
    for event in events:
        for key in ("item_id",):
            if key in event:
                text = text.replace(event[key], "ID")
    return orjson.loads(text)  # type: ignore[no-any-return]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_any_framing_gives_the_same_events(newline: bytes) -> None:
    body = wire(r1_events(), newline)
    whole = normalised(translate([body]))
    for size in (1, 2, 7, 64):
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        assert normalised(translate(pieces)) == whole
    final = whole[-1]["response"]
    assert final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "A cat on a sofa."
    assert final["usage"]["input_tokens"] == 10


def test_parallel_tool_calls_each_become_an_item() -> None:
    events = [
        chunk_event({"role": "assistant", "content": None}),
        chunk_event(
            {
                "tool_calls": [
                    {"index": 0, "id": "c0", "function": {"name": "a", "arguments": '{"x"'}},
                    {"index": 1, "id": "c1", "function": {"name": "b", "arguments": "{}"}},
                ]
            }
        ),
        chunk_event({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk_event({}, "tool_calls"),
        "[DONE]",
    ]
    final = translate([wire(events)])[-1]["response"]
    calls = [(i["call_id"], i["name"], i["arguments"]) for i in final["output"]]
    assert calls == [("c0", "a", '{"x": 1}'), ("c1", "b", "{}")]


def test_tool_call_after_reasoning() -> None:
    translated = translate([wire(tool_call_events("get_weather"))])
    final = translated[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][1]["arguments"] == '{"city": "Paris"}'
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 4


def test_length_is_incomplete() -> None:
    final = translate([wire(stream_events(("a", "b"), finish="length"))])[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_upstream_error_event_fails_the_response() -> None:
    cut = r1_events()[:4]
    error = {"error": {"message": "cut", "type": "upstream_error", "param": None,
                       "code": "upstream_stream_truncated"}}  # fmt: skip
    events = translate([wire(cut) + b"data: " + orjson.dumps(error) + b"\n\n"])
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_stream_truncated"
    failed = events[-1]["response"]
    assert failed["error"]["code"] == "server_error"
    assert failed["output"][-1]["status"] == "incomplete"


def test_an_end_without_done_fails_the_response() -> None:
    events = translate([wire(r1_events()[:3])])
    assert events[-1]["type"] == "response.failed"
