"""The Anthropic dialect on its own: the stream translator fed any framing of the upstream's
bytes gives the same events, each valid by the `anthropic` SDK's own event types and in
Anthropic's order; every stream ends in message_stop or an error event. And the request
translation for what the proxy tests through a real server less directly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from app.dialects.anthropic import MessagesRequest, to_chat
from app.dialects.anthropic_output import error_of, message_from_chat, message_object
from app.dialects.anthropic_stream import PING, MessagesStream
from app.errors import InvalidRequest
from tests.upstream_server import (
    chunk_event,
    completion,
    r1_events,
    stream_events,
    tool_call_events,
)

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def wire(events: list[str], newline: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + event.encode() + newline + newline for event in events)


def translate(pieces: list[bytes], stop: list[str] | None = None) -> list[dict[str, Any]]:
    stream = MessagesStream(message_object("msg_1", "m"), stop)
    out = stream.start() + b"".join(stream.feed(piece) for piece in pieces) + stream.finish()
    assert stream.finish() == b""  # exactly once
    events = []
    for block in out.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        event = orjson.loads(data[len(b"data: ") :])
        assert name == b"event: " + event["type"].encode()
        if event["type"] != "error":
            EVENTS.validate_python(event)  # the SDK's own type for this event
        events.append(event)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] in ("message_stop", "error")
    assert kinds.count("message_stop") + kinds.count("error") == 1
    return events


def blocks(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each content block's type and its streamed text or JSON."""
    found: list[tuple[str, str]] = []
    open_index = None
    for event in events:
        if event["type"] == "content_block_start":
            assert event["index"] == len(found) and open_index is None
            open_index = event["index"]
            found.append((event["content_block"]["type"], ""))
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
            delta = event["delta"]
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            found[-1] = (found[-1][0], found[-1][1] + piece)
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    assert open_index is None
    return found


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("events", [r1_events(), tool_call_events("get_weather")])
def test_any_framing_gives_the_same_events(newline: bytes, events: list[str]) -> None:
    body = wire(events, newline)
    whole = translate([body])
    for size in (1, 2, 7, 64):
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        assert translate(pieces) == whole


def test_thinking_text_and_usage() -> None:
    events = translate([wire(r1_events())])
    assert blocks(events) == [("thinking", "The user sent a cat."), ("text", "A cat on a sofa.")]
    delta = events[-2]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 10, "output_tokens": 7}
    start = events[1]["content_block"]
    assert start == {"type": "thinking", "thinking": "", "signature": ""}


def test_a_tool_call_streams_input_json() -> None:
    events = translate([wire(tool_call_events("get_weather"))])
    assert blocks(events) == [
        ("thinking", "I should call the tool."),
        ("tool_use", '{"city": "Paris"}'),
    ]
    start = [e for e in events if e["type"] == "content_block_start"][-1]
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_length_and_stop_sequences() -> None:
    events = translate([wire(stream_events(("A cat",), finish="length"))])
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    hit = orjson.loads(chunk_event({}, "stop"))
    hit["choices"][0]["stop_reason"] = "END"  # vLLM names the stop string it hit
    events = translate(
        [wire([chunk_event({"content": "A"}), orjson.dumps(hit).decode(), "[DONE]"])], ["END"]
    )
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


@pytest.mark.parametrize("cut", [0, 1, 3, 5])
def test_a_stream_cut_anywhere_ends_in_an_error_event(cut: int) -> None:
    events = translate([wire(r1_events()[:cut])])
    assert events[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "the upstream stream ended early"},
    }


def test_the_relays_error_event_becomes_anthropics() -> None:
    error = orjson.dumps({"error": {"message": "cut", "code": "upstream_stream_truncated"}})
    events = translate([wire([chunk_event({"content": "A"}), error.decode()])])
    assert events[-1]["error"] == {"type": "api_error", "message": "cut"}
    limited = orjson.dumps({"error": {"message": "slow", "code": "429"}})
    assert translate([wire([limited.decode()])])[-1]["error"]["type"] == "rate_limit_error"


def test_the_ping_is_anthropics_event() -> None:
    name, data = PING.rstrip(b"\n").split(b"\n")
    assert name == b"event: ping"
    assert orjson.loads(data[len(b"data: ") :]) == {"type": "ping"}  # the SDK skips it


def test_a_json_answer_is_a_message_by_the_sdks_type() -> None:
    calls = [
        {
            "id": "call_9",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]
    answer = orjson.dumps(completion("Let me look.", tool_calls=calls, finish="tool_calls"))
    message = Message.model_validate(message_from_chat(answer, "msg_1", "m", None))
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].model_dump()["input"] == {"a": 1}
    assert message.stop_reason == "tool_use"


def test_errors_by_status() -> None:
    assert error_of(503, "busy") == (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    )
    assert error_of(502, "x")[1]["error"]["type"] == "api_error"
    assert error_of(403, "x")[1]["error"]["type"] == "permission_error"
    assert error_of(408, "x")[1]["error"]["type"] == "invalid_request_error"


def request(**fields: Any) -> dict[str, Any]:
    return to_chat(MessagesRequest.model_validate({"max_tokens": 5, **fields}))


def test_blocks_become_chat_parts() -> None:
    body = request(
        system="S",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "source": {"type": "text", "data": "hi"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "zz"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
            },
        ],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
    )
    system, user, assistant, tool = body["messages"]
    assert system == {"role": "system", "content": "S"}
    assert user["content"] == [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {
            "type": "file",
            "file": {"filename": "document", "file_data": "data:text/plain;base64,aGk="},
        },
    ]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}}
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "42"}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].source.type",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "x"}},
            "tool_choice.type",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "w"}],
            },
            "tools[0].type",
        ),
    ],
)
def test_what_chat_cannot_say_is_a_400_naming_it(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request(**fields)
    assert caught.value.param == param
