"""The OpenAI Agents SDK (`openai-agents`) against the proxy, in its default Responses mode: an
agent with one function tool, run to its final answer through a scripted R1 upstream that
first calls the tool, then answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.openai_provider import OpenAIProvider
from openai import AsyncOpenAI

from tests.helpers import ProxyServer
from tests.upstream_server import FakeUpstream, Reply, completion, tool_call_events

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
ANSWER = "It is 18 C and sunny in Paris."


@pytest.fixture(autouse=True)
def _no_tracing() -> Iterator[None]:
    set_tracing_disabled(True)  # the SDK would otherwise upload traces to OpenAI
    yield


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"18 C and sunny in {city}"


def run_agent(proxy: ProxyServer, *, streamed: bool) -> Any:
    async def run() -> Any:
        client = AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-agent", max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer with the tool's help.",
            tools=[get_weather],
            model="deepseek-r1",
        )
        # OpenAIProvider's default API is Responses, as the SDK's own default.
        config = RunConfig(model_provider=OpenAIProvider(openai_client=client))
        try:
            if not streamed:
                return await Runner.run(agent, "Weather in Paris?", run_config=config)
            result = Runner.run_streamed(agent, "Weather in Paris?", run_config=config)
            async for _ in result.stream_events():
                pass
            return result
        finally:
            await client.close()

    return asyncio.run(run())


def check_second_turn(upstream: FakeUpstream) -> None:
    assert [request.path for request in upstream.requests] == ["/v1/chat/completions"] * 2
    first, second = (request.json for request in upstream.requests)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"][0] == {"role": "system", "content": "Answer with the tool's help."}
    roles = [message["role"] for message in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"][0]["id"] == "call_1"
    assert second["messages"][3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "18 C and sunny in Paris",
    }
    # The reasoning item the SDK sends back never reaches R1.
    assert "reasoning_content" not in upstream.requests[1].body.decode()
    assert "I should call" not in upstream.requests[1].body.decode()


def test_agent_with_a_function_tool(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(
        Reply(
            body=completion(
                None, reasoning="I should call the tool.", tool_calls=[CALL], finish="tool_calls"
            )
        ),
        Reply(body=completion(ANSWER)),
    )
    result = run_agent(proxy, streamed=False)
    assert result.final_output == ANSWER
    check_second_turn(upstream)


def test_streamed_agent_with_a_function_tool(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    from tests.upstream_server import stream_events

    upstream.script(
        Reply(events=tool_call_events("get_weather")),
        Reply(events=stream_events(("It is 18 C ", "and sunny in Paris."))),
    )
    result = run_agent(proxy, streamed=True)
    assert result.final_output == ANSWER
    check_second_turn(upstream)
