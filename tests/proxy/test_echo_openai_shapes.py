"""The echo upstream (`serve --echo`) answers in OpenAI's shapes, so OpenAI's own examples
run against it unchanged: a usage chunk only when `stream_options.include_usage` asks for
it, `logprobs: null`, `message.refusal: null`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import DATA, ProxyServer, data_url, image_message

CHAT = "/v1/chat/completions"


@pytest.fixture
def echo_proxy(start_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return start_proxy(upstream_base_url="echo", upstream_api_key="")


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def test_openais_plain_stream_loop_works(echo_proxy: ProxyServer) -> None:
    messages: list[Any] = [image_message(data_url(DATA / "chelsea.png"))]
    stream = sdk(echo_proxy).chat.completions.create(
        model="deepseek-r1", messages=messages, stream=True
    )
    answer = ""
    chunks = 0
    for chunk in stream:  # as in OpenAI's examples: no check for an empty `choices`
        chunks += 1
        answer += chunk.choices[0].delta.content or ""
        assert chunk.usage is None
        assert chunk.choices[0].logprobs is None
    assert chunks > 2 and answer.startswith("clip-proxy echo: 1 image")


def test_a_usage_chunk_comes_when_asked(echo_proxy: ProxyServer) -> None:
    stream = sdk(echo_proxy).chat.completions.create(
        model="deepseek-r1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens > 0
    assert all(chunk.choices and chunk.usage is None for chunk in chunks[:-1])


def test_the_wire_carries_the_nulls_openai_sends(echo_proxy: ProxyServer) -> None:
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}
    completion = httpx.post(echo_proxy.url + CHAT, json=body, timeout=30).json()
    choice = completion["choices"][0]
    assert "logprobs" in choice and choice["logprobs"] is None
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    with httpx.stream("POST", echo_proxy.url + CHAT, json={**body, "stream": True}) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data: {")]
    first = httpx.Response(200, content=events[0].removeprefix("data: ")).json()
    assert first["choices"][0]["logprobs"] is None
    assert "usage" not in first  # not asked for: no usage field at all, as OpenAI streams
    assert all('"usage"' not in event for event in events)
