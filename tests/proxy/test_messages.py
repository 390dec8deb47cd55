"""POST /v1/messages through a real proxy, read by the official `anthropic` SDK and its own types.

The fake upstream (tests/upstream_server.py) plays DeepSeek-R1 over Chat Completions; what the
proxy sent it is checked as well as what the SDK parsed from the proxy's answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, TextBlock, ThinkingBlock, ToolUseBlock

from tests import pdfs
from tests.helpers import DATA, ProxyServer, images_encoded, unique_png
from tests.upstream_server import (
    FakeUpstream,
    Reply,
    completion,
    stream_events,
    tool_call_events,
)

MESSAGES = "/v1/messages"
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


_CLIENTS: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every SDK client a test made is closed after it: no socket is left to the GC."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client_of(proxy: ProxyServer, key: str = "sk-client", **options: Any) -> anthropic.Anthropic:
    if "auth_token" not in options:
        options["api_key"] = key
    client = anthropic.Anthropic(base_url=proxy.url, max_retries=0, timeout=30, **options)
    _CLIENTS.append(client)
    return client


def image_block(name: str = "chelsea.png", image: bytes | None = None) -> Any:
    data = base64.b64encode(image if image is not None else (DATA / name).read_bytes()).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def sent_messages(upstream: FakeUpstream) -> list[dict[str, Any]]:
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    messages: list[dict[str, Any]] = sent.json["messages"]
    return messages


def anthropic_error(reply: httpx.Response, status: int, error_type: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert set(body["error"]) == {"type", "message"}
    message: str = body["error"]["message"]
    assert message
    return message


# ---- non-stream ------------------------------------------------------------------------------


def test_text_answer_with_thinking_and_usage(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    message = client_of(proxy).messages.create(
        model="deepseek-r1",
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "Hello"}],
        extra_body={"temperature": 0.2, "top_k": 5},  # this SDK version has no parameters
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"anthropic-beta": "whatever-2025"},
    )
    assert isinstance(message, Message)
    assert message.id.startswith("msg_")
    assert message.model == "deepseek-r1"
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking == "The user sent a cat."
    assert isinstance(text, TextBlock) and text.text == "A cat on a sofa."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 7)
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    body = sent.json
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert body["max_tokens"] == 50
    assert (body["temperature"], body["top_k"], body["stop"], body["user"]) == (
        0.2,
        5,
        ["END"],
        "u-1",
    )
    assert "thinking" not in body and "metadata" not in body


def test_finish_reasons_become_stop_reasons(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(body=completion("A cat on", finish="length", reasoning=None)))
    message = client_of(proxy).messages.create(
        model="deepseek-r1", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["text"]


def test_an_image_reaches_the_upstream_as_text(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    before = images_encoded(proxy.url)
    message = client_of(proxy).messages.create(
        model="deepseek-r1",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    image_block(image=unique_png()),
                ],
            }
        ],
    )
    assert message.content[-1].type == "text"
    assert images_encoded(proxy.url) == before + 1
    (user,) = sent_messages(upstream)
    assert isinstance(user["content"], str)
    assert user["content"].startswith("What is this?\n<image>")
    assert "base64" not in json.dumps(user)


def test_a_corrupt_pdf_document_is_refused_in_anthropics_shape(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    pdf = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
    document: Any = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_of(proxy).messages.create(
            model="deepseek-r1",
            max_tokens=50,
            messages=[
                {"role": "user", "content": [document, {"type": "text", "text": "Summarise"}]}
            ],
        )
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert not upstream.requests


def test_a_pdf_document_reaches_the_upstream_as_words(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    data, written = pdfs.english_pdf(pages=1, lines=5, seed=24)
    document: Any = {
        "type": "document",
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": base64.b64encode(data).decode(),
        },
    }
    answer = client_of(proxy).messages.create(
        model="deepseek-r1",
        max_tokens=50,
        messages=[{"role": "user", "content": [document, {"type": "text", "text": "Summarise"}]}],
    )
    assert answer.stop_reason == "end_turn"
    sent = json.dumps(upstream.requests[-1].json["messages"], ensure_ascii=False)
    assert "<document index=" in sent and 'pages=\\"1\\"' in sent
    assert written[0].splitlines()[0] in sent


def test_two_turns_drop_thinking_from_history(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    first = client.messages.create(
        model="deepseek-r1", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    )
    upstream.reset()
    history: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": "And the dog?"},
    ]
    second = client.messages.create(model="deepseek-r1", max_tokens=50, messages=history)
    assert isinstance(second.content[-1], TextBlock)
    assert sent_messages(upstream) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "A cat on a sofa."},
        {"role": "user", "content": "And the dog?"},
    ]


def test_count_tokens_estimates_from_the_rewritten_prompt(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    text = client.messages.count_tokens(
        model="deepseek-r1", messages=[{"role": "user", "content": "Hello there, proxy"}]
    )
    with_image = client.messages.count_tokens(
        model="deepseek-r1",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, image_block()]}],
    )
    assert 1 <= text.input_tokens < 20
    # Under the seed preset an image becomes a 768-number vector: many tokens.
    assert with_image.input_tokens > 1000
    assert not upstream.requests


def test_dry_run_shows_the_internal_chat_request(proxy: ProxyServer) -> None:
    reply = httpx.post(
        proxy.url + MESSAGES,
        json={"max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"X-Clip-Proxy-Dry-Run": "true", "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert reply.status_code == 200
    assert reply.json()["messages"] == [{"role": "user", "content": "Hi"}]
    assert int(reply.headers["x-clip-proxy-prompt-chars"]) > 0
    assert reply.headers["x-request-id"]
    assert "server-timing" in reply.headers


# ---- stream ----------------------------------------------------------------------------------


def test_stream_with_the_sdk(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(events=stream_events(("A cat ", "on a ", "sofa."), reasoning=("Hm",))))
    with client_of(proxy).messages.stream(
        model="deepseek-r1",
        max_tokens=50,
        messages=[{"role": "user", "content": [image_block(), {"type": "text", "text": "?"}]}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "A cat on a sofa."
    thinking, answer = final.content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking == "Hm"
    assert isinstance(answer, TextBlock) and answer.text == "A cat on a sofa."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 7)
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}


def test_stream_events_in_anthropics_order(proxy: ProxyServer) -> None:
    reply = httpx.post(
        proxy.url + MESSAGES,
        json={"max_tokens": 9, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert reply.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in reply.text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_pings_are_anthropics_ping_event(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(ping_interval_s=0.2)
    upstream.script(Reply(first_chunk_delay_s=1.0))
    body = {"max_tokens": 9, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", proxy.url + MESSAGES, json=body, timeout=30) as answer:
        text = answer.read().decode()
    assert 'event: ping\ndata: {"type":"ping"}\n\n' in text
    assert "\n: ping" not in text and not text.startswith(": ping")  # no SSE comment
    assert text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')


@pytest.mark.parametrize("cut_after", [0, 3])
def test_a_cut_upstream_stream_ends_in_an_error_event(
    proxy: ProxyServer, upstream: FakeUpstream, cut_after: int
) -> None:
    upstream.script(Reply(reset_after_chunks=cut_after))
    client = client_of(proxy)
    hello: Any = [{"role": "user", "content": "Hi"}]
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="deepseek-r1", max_tokens=50, messages=hello) as stream,
    ):
        stream.get_final_message()
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"


# ---- tools -----------------------------------------------------------------------------------


def test_tool_round_trip_with_an_image_in_the_tool_result(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    question: Any = {"role": "user", "content": "Show me the weather map of Paris"}
    upstream.script(Reply(events=tool_call_events("get_weather")))
    with client.messages.stream(
        model="deepseek-r1",
        max_tokens=200,
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert isinstance(call, ToolUseBlock)
    assert (call.id, call.name, call.input) == ("call_1", "get_weather", {"city": "Paris"})
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert sent.json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert sent.json["tool_choice"] == "required"

    history: Any = [
        question,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": [{"type": "text", "text": "Map attached."}, image_block()],
                },
                {"type": "text", "text": "What does it show?"},
            ],
        },
    ]
    for preset, fmt, mark in (
        ("describe", "inline", '<image index="1" width='),
        ("seed", "inline", "<image>"),
        ("seed", "content_part", "<image>"),
    ):
        upstream.reset()
        answer = client.messages.create(
            model="deepseek-r1",
            max_tokens=200,
            messages=history,
            tools=[WEATHER_TOOL],
            extra_headers={"X-Clip-Proxy-Preset": preset, "X-Clip-Proxy-Format": fmt},
        )
        assert isinstance(answer.content[-1], TextBlock)
        messages = sent_messages(upstream)
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
        assistant, tool = messages[1], messages[2]
        assert assistant["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        assert "reasoning_content" not in assistant
        assert tool["tool_call_id"] == "call_1"
        assert isinstance(tool["content"], str), (preset, fmt)
        assert tool["content"].startswith("Map attached.\n" + mark), (preset, fmt)
        assert messages[3]["content"] == "What does it show?"


# ---- errors ----------------------------------------------------------------------------------


def test_auth_by_x_api_key_or_bearer_and_errors_in_anthropics_shape(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(api_keys="right", max_body_bytes=50_000)
    hello: Any = {"model": "deepseek-r1", "max_tokens": 9}
    hello["messages"] = [{"role": "user", "content": "Hi"}]
    url = proxy.url + MESSAGES
    anthropic_error(httpx.post(url, json=hello, timeout=30), 401, "authentication_error")
    wrong = httpx.post(url, json=hello, headers={"x-api-key": "wrong"}, timeout=30)
    anthropic_error(wrong, 401, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        client_of(proxy, key="wrong").messages.create(**hello)
    assert client_of(proxy, key="right").messages.create(**hello).content
    bearer = client_of(proxy, auth_token="right")
    assert bearer.messages.create(**hello).content
    # The body limit answers in Anthropic's shape too.
    big = {**hello, "messages": [{"role": "user", "content": "x" * 60_000}]}
    too_big = httpx.post(url, json=big, headers={"x-api-key": "right"}, timeout=30)
    anthropic_error(too_big, 413, "request_too_large")
    unknown = httpx.post(url + "/nope", json=hello, headers={"x-api-key": "right"}, timeout=30)
    anthropic_error(unknown, 404, "not_found_error")
    # Other routes keep OpenAI's shape.
    chat = httpx.post(proxy.url + "/v1/chat/completions", json=hello, timeout=30)
    assert chat.status_code == 401 and chat.json()["error"]["type"] == "authentication_error"


def test_request_errors_in_anthropics_shape(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    url = proxy.url + MESSAGES
    missing = httpx.post(url, json={"messages": [{"role": "user", "content": "Hi"}]}, timeout=30)
    assert "max_tokens" in anthropic_error(missing, 400, "invalid_request_error")
    data = base64.b64encode(b"not an image at all").decode()
    bad_image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": data},
    }
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_of(proxy).messages.create(
            model="deepseek-r1",
            max_tokens=9,
            messages=[{"role": "user", "content": [bad_image]}],
        )
    body: Any = caught.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert not upstream.requests


def test_upstream_429_and_503_in_anthropics_shape(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(upstream_max_retries=0)
    client = client_of(proxy)
    hello: Any = {"max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]}
    upstream.script(
        Reply(status=429, body={"error": {"message": "slow down", "type": "rate_limit"}})
    )
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="deepseek-r1", **hello)
    body: Any = limited.value.body
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    upstream.script(Reply(status=503, body={"error": {"message": "busy", "type": "x"}}))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(model="deepseek-r1", stream=True, **hello)
    assert overloaded.value.status_code == 529
    body = overloaded.value.body
    assert body["error"]["type"] == "overloaded_error"


def test_load_shedding_is_anthropics_529(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(max_in_flight=1)
    upstream.script(Reply(first_chunk_delay_s=1.5))
    body = {"max_tokens": 9, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", proxy.url + MESSAGES, json=body, timeout=30) as held:
        assert held.status_code == 200  # in flight until its first chunk
        shed = httpx.post(proxy.url + MESSAGES, json=body, timeout=30)
        held.read()
    anthropic_error(shed, 529, "overloaded_error")
    assert shed.headers["retry-after"] == "1"


def test_metrics_carry_the_anthropic_dialect(proxy: ProxyServer) -> None:
    from tests.helpers import metric_value

    name = "clip_proxy_stream_duration_seconds_count"
    before = metric_value(proxy.url, name, outcome="complete", dialect="anthropic")
    with client_of(proxy).messages.stream(
        model="deepseek-r1", max_tokens=9, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        stream.get_final_message()
    assert metric_value(proxy.url, name, outcome="complete", dialect="anthropic") == before + 1
    requests = metric_value(
        proxy.url, "clip_proxy_requests_total", route="/v1/messages", dialect="anthropic"
    )
    assert requests >= 1
