"""POST /v1/responses through a real proxy, read by the official `openai` SDK and its own types.

The fake upstream (tests/upstream_server.py) plays DeepSeek-R1 over Chat Completions; what the
proxy sent it is checked as well as what the SDK parsed from the proxy's answer."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
)
from pydantic import BaseModel

from tests import pdfs
from tests.helpers import DATA, ProxyServer, data_url, images_encoded
from tests.upstream_server import (
    FakeUpstream,
    Reply,
    completion,
    stream_events,
    tool_call_events,
)

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def client_of(proxy: ProxyServer, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)


def image_input(text: str = "What is this?", image: str = "chelsea.png") -> Any:
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": text},
                {"type": "input_image", "image_url": data_url(DATA / image), "detail": "auto"},
            ],
        }
    ]


def sse_events(body: str) -> list[dict[str, Any]]:
    """The `data:` payloads of a Responses stream, parsed."""
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


# ---- non-stream ------------------------------------------------------------------------------


def test_text_answer_with_reasoning_and_usage(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = client_of(proxy).responses.create(
        model="deepseek-r1", input="Hello", instructions="Be brief.", max_output_tokens=50
    )
    assert isinstance(response, Response)
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == "A cat on a sofa."
    reasoning, message = response.output
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.content is not None
    assert reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == "The user sent a cat."
    assert isinstance(message, ResponseOutputMessage)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 7)
    assert response.usage.total_tokens == 17
    sent = upstream.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert sent["max_tokens"] == 50
    assert "stream" not in sent and "input" not in sent and "store" not in sent


def test_image_goes_through_the_bridge(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = client_of(proxy).responses.create(model="deepseek-r1", input=image_input())
    assert response.output_text == "A cat on a sofa."
    sent = upstream.requests[-1].json["messages"]
    assert len(sent) == 1 and sent[0]["role"] == "user"
    assert sent[0]["content"].startswith("What is this?\n<image>")
    assert "base64" not in json.dumps(sent)


def test_roles_tools_and_options_are_translated(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    items: Any = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Weather?"},
        # What the Agents SDK sends back on its second turn: accepted, never sent upstream.
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "secret thoughts"}],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
    ]
    client_of(proxy).responses.create(
        model="deepseek-r1",
        input=items,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        temperature=0.5,
        top_p=0.9,
        reasoning={"effort": "low"},
        metadata={"team": "a"},
        store=False,
    )
    sent = upstream.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me see."},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (sent["temperature"], sent["top_p"], sent["parallel_tool_calls"]) == (0.5, 0.9, False)
    assert sent["reasoning_effort"] == "low"
    assert sent["metadata"] == {"team": "a"}
    assert "secret thoughts" not in upstream.requests[-1].body.decode()


class Pet(BaseModel):
    name: str
    legs: int


def test_structured_output(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(body=completion('{"name": "Tom", "legs": 4}')))
    parsed = client_of(proxy).responses.parse(
        model="deepseek-r1", input="A pet, as JSON", text_format=Pet, store=False
    )
    assert parsed.output_parsed == Pet(name="Tom", legs=4)
    format_ = upstream.requests[-1].json["response_format"]
    assert format_["type"] == "json_schema"
    assert format_["json_schema"]["name"] == "Pet"
    assert format_["json_schema"]["schema"]["required"] == ["name", "legs"]


def test_length_finish_is_incomplete(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(body=completion("A cat on", finish="length")))
    response = client_of(proxy).responses.create(model="deepseek-r1", input="Hi", store=False)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("tool", "named"),
    [
        ({"type": "web_search"}, "web_search"),
        ({"type": "file_search", "vector_store_ids": ["vs_1"]}, "file_search"),
        (
            {
                "type": "computer_use_preview",
                "display_width": 1,
                "display_height": 1,
                "environment": "linux",
            },
            "computer_use_preview",
        ),
    ],
)
def test_built_in_tools_are_refused_by_name(
    proxy: ProxyServer, upstream: FakeUpstream, tool: Any, named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_of(proxy).responses.create(model="deepseek-r1", input="Hi", tools=[tool])
    error = caught.value.body
    assert isinstance(error, dict)
    assert named in error["message"]
    assert error["param"] == "tools[0].type"
    assert error["code"] == "unsupported_tool"
    assert upstream.requests == []


def test_input_file_reaches_the_upstream_as_words(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    data, written = pdfs.english_pdf(pages=1, lines=5)
    document = "data:application/pdf;base64," + base64.b64encode(data).decode()
    answer = client_of(proxy).responses.create(
        model="deepseek-r1",
        store=False,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Summarise"},
                    {"type": "input_file", "filename": "a.pdf", "file_data": document},
                ],
            }
        ],
    )
    assert answer.status == "completed"
    sent = json.dumps(upstream.requests[-1].json["messages"], ensure_ascii=False)
    assert '<document index=\\"1\\" name=\\"a.pdf\\" pages=\\"1\\"' in sent
    assert written[0].split()[0] in sent


def test_dry_run_request_id_server_timing(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    answer = httpx.post(
        proxy.url + "/v1/responses",
        json={"model": "deepseek-r1", "input": image_input(), "instructions": "Be brief."},
        headers={"X-Clip-Proxy-Dry-Run": "true", "X-Request-ID": "req-responses-1"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "req-responses-1"
    assert "server-timing" in answer.headers
    assert int(answer.headers["x-clip-proxy-prompt-chars"]) > 0
    body = answer.json()
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "<image>" in body["messages"][1]["content"]
    assert upstream.requests == []


def test_preset_header_and_body_field(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    answer = httpx.post(
        proxy.url + "/v1/responses",
        json={"input": image_input(), "clip_proxy": {"preset": "describe"}},
        headers={"X-Clip-Proxy-Dry-Run": "true"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    described = answer.json()["messages"][0]["content"]
    assert "<image>" not in described  # the describe preset writes words, not the vector
    assert "clip_proxy" not in answer.json()
    bad = httpx.post(
        proxy.url + "/v1/responses",
        json={"input": "hi"},
        headers={"X-Clip-Proxy-Preset": "nonsense"},
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_preset"


# ---- stream ----------------------------------------------------------------------------------


def test_stream_events_parsed_by_the_sdk(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    with client.responses.stream(model="deepseek-r1", input=image_input(), store=False) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    assert final.output_text == "A cat on a sofa."
    assert final.status == "completed"
    assert final.usage is not None and final.usage.input_tokens == 10
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "The user sent a cat."
    sent = upstream.requests[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_length_finish_is_incomplete(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(events=stream_events(("A cat ", "on"), finish="length")))
    with client_of(proxy).responses.stream(model="deepseek-r1", input="Hi", store=False) as stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "A cat on"


@pytest.mark.parametrize("cut_after", [0, 3, 5])
def test_a_cut_upstream_stream_ends_in_response_failed(
    proxy: ProxyServer, upstream: FakeUpstream, cut_after: int
) -> None:
    upstream.script(Reply(reset_after_chunks=cut_after))
    answer = httpx.post(
        proxy.url + "/v1/responses",
        json={"model": "deepseek-r1", "input": "Hi", "stream": True, "store": False},
        timeout=30,
    )
    events = sse_events(answer.text)
    assert events[0]["type"] == "response.created"
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_stream_truncated"
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_pings_keep_a_silent_stream_alive(start_proxy: Any, upstream: FakeUpstream) -> None:
    proxy = start_proxy(ping_interval_s=0.2)
    upstream.script(Reply(first_chunk_delay_s=1.0))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/responses",
        json={"input": "Hi", "stream": True, "store": False},
        timeout=30,
    ) as answer:
        body = answer.read().decode()
    assert ": ping\n\n" in body
    events = sse_events(body)
    assert events[-1]["type"] == "response.completed"
    assert Response.model_validate(events[-1]["response"]).output_text == "A cat on a sofa."


# ---- tools -----------------------------------------------------------------------------------


def test_function_tool_round_trip(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    upstream.script(Reply(events=tool_call_events("get_weather")))
    with client.responses.stream(
        model="deepseek-r1",
        input="Weather in Paris?",
        tools=[WEATHER_TOOL],
    ) as stream:
        events = list(stream)
        first = stream.get_final_response()
    calls = [item for item in first.output if isinstance(item, ResponseFunctionToolCall)]
    assert len(calls) == 1
    call = calls[0]
    assert (call.name, call.call_id, call.arguments) == (
        "get_weather",
        "call_1",
        '{"city": "Paris"}',
    )
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert "response.function_call_arguments.delta" in [e.type for e in events]
    assert first.usage is not None
    assert first.usage.output_tokens_details.reasoning_tokens == 4

    # The client runs the tool and sends its output; the upstream answers in words.
    second = client.responses.create(
        model="deepseek-r1",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "A cat on a sofa."
    sent = upstream.requests[-1].json["messages"]
    assert sent == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]


def test_function_call_items_in_input_without_state(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    tool_call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    upstream.script(Reply(body=completion(None, tool_calls=[tool_call], finish="tool_calls")))
    client = client_of(proxy)
    first = client.responses.create(
        model="deepseek-r1",
        input="Oslo?",
        tools=[WEATHER_TOOL],
        store=False,
    )
    call = first.output[-1]
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.call_id == "call_9"
    history: Any = [
        {"role": "user", "content": "Oslo?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": "call_9", "output": "-3 C"},
    ]
    client.responses.create(model="deepseek-r1", input=history, store=False)
    sent = upstream.requests[-1].json["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_9"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": "-3 C"}


# ---- state -----------------------------------------------------------------------------------


def test_two_turns_by_previous_response_id(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    first = client.responses.create(model="deepseek-r1", input=image_input(image="coffee.png"))
    encoded = images_encoded(proxy.url)
    with client.responses.stream(
        model="deepseek-r1", input="And its colour?", previous_response_id=first.id
    ) as stream:
        second = stream.get_final_response()
    assert second.previous_response_id == first.id
    sent = upstream.requests[-1].json["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "user"]
    # The earlier turn's image comes back as the seed's retained vector, from the cache.
    assert "<retain_image_emb>" in sent[0]["content"]
    assert sent[1] == {"role": "assistant", "content": "A cat on a sofa."}
    assert sent[2] == {"role": "user", "content": "And its colour?"}
    assert images_encoded(proxy.url) == encoded

    stored = client.responses.retrieve(second.id)
    assert stored.id == second.id and stored.output_text == "A cat on a sofa."
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="deepseek-r1", input="?", previous_response_id=second.id)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    client = client_of(proxy)
    response = client.responses.create(model="deepseek-r1", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_key_isolation(start_proxy: Any, upstream: FakeUpstream) -> None:
    proxy = start_proxy(api_keys="key-alice,key-bob")
    alice, bob = client_of(proxy, "key-alice"), client_of(proxy, "key-bob")
    mine = alice.responses.create(model="deepseek-r1", input="Secret plans")
    assert alice.responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    asked = len(upstream.requests)
    with pytest.raises(openai.BadRequestError):
        bob.responses.create(model="deepseek-r1", input="?", previous_response_id=mine.id)
    assert len(upstream.requests) == asked  # nothing of Alice's went upstream for Bob
    assert alice.responses.retrieve(mine.id).id == mine.id  # still there after Bob's tries


def test_expiry(start_proxy: Any, upstream: FakeUpstream) -> None:
    import time

    proxy = start_proxy(responses_ttl_s=1)
    client = client_of(proxy)
    response = client.responses.create(model="deepseek-r1", input="Hi")
    assert client.responses.retrieve(response.id).id == response.id
    time.sleep(1.2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_store_disabled_refuses_state(start_proxy: Any, upstream: FakeUpstream) -> None:
    proxy = start_proxy(responses_store=False)
    client = client_of(proxy)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="deepseek-r1", input="Hi", store=True)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "store_disabled"
    # Without an explicit `store: true` the request is answered and nothing is kept.
    response = client.responses.create(model="deepseek-r1", input="Hi")
    assert response.model_dump()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_metrics_carry_the_dialect(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    from tests.helpers import metric_value

    name = "clip_proxy_stream_duration_seconds_count"
    before = metric_value(proxy.url, name, outcome="complete", dialect="responses")
    with client_of(proxy).responses.stream(model="deepseek-r1", input="Hi", store=False) as s:
        s.get_final_response()
    assert metric_value(proxy.url, name, outcome="complete", dialect="responses") == before + 1
    requests = metric_value(
        proxy.url, "clip_proxy_requests_total", route="/v1/responses", dialect="responses"
    )
    assert requests >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_status_is_relayed_in_openai_shape(
    proxy: ProxyServer, upstream: FakeUpstream, stream: bool
) -> None:
    refusal = {"error": {"message": "model busy", "type": "invalid_request_error",
                         "param": None, "code": "busy"}}  # fmt: skip
    upstream.script(Reply(status=400, body=refusal))
    with pytest.raises(openai.BadRequestError) as caught:
        client_of(proxy).responses.create(
            model="deepseek-r1", input="Hi", stream=stream, store=False
        )
    assert caught.value.body == refusal["error"]


def test_a_stored_image_reference_from_a_client_is_just_a_bad_url(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    client = client_of(proxy)
    client.responses.create(model="deepseek-r1", input=image_input())  # stores a blob
    forged: Any = [
        {
            "role": "user",
            "content": [{"type": "input_image", "image_url": "clip-proxy-stored:" + "0" * 64}],
        }
    ]
    asked = len(upstream.requests)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="deepseek-r1", input=forged, store=False)
    assert len(upstream.requests) == asked
