"""The embedded echo upstream (`CLIP_PROXY_UPSTREAM_BASE_URL=echo`): the proxy reaches it
over HTTP like any upstream, and it answers like DeepSeek-R1 with an account of what it
received."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from app.echo.upstream import account, received_images
from tests.helpers import DATA, DRY_RUN, ProxyServer, data_url, image_message

CHAT = "/v1/chat/completions"


@pytest.fixture
def echo_proxy(start_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return start_proxy(upstream_base_url="echo", upstream_api_key="")


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def sent_vector(proxy: ProxyServer, messages: list[dict[str, object]]) -> str:
    """The vector the proxy writes for the image of the last message (a dry run)."""
    body = httpx.post(proxy.url + CHAT, json={"messages": messages}, headers=DRY_RUN, timeout=30)
    content = body.json()["messages"][-1]["content"]
    return str(content.split("<image>")[1].split("</image>")[0])


def test_a_stream_reasons_then_answers_with_an_account(echo_proxy: ProxyServer) -> None:
    messages: list[Any] = [
        image_message(data_url(DATA / "chelsea.png"), "What is in this picture?")
    ]
    stream = sdk(echo_proxy).chat.completions.create(
        model="deepseek-r1",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    kinds: list[str] = []
    reasoning, answer, usage = "", "", None
    for chunk in stream:
        usage = chunk.usage or usage
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        thought = getattr(delta, "reasoning_content", None)
        if thought:
            reasoning += thought
            kinds.append("reasoning")
        if delta.content:
            answer += delta.content
            kinds.append("content")
    # DeepSeek-R1's order: every reasoning delta before the first answer delta.
    assert kinds and kinds[0] == "reasoning" and "reasoning" not in kinds[kinds.index("content") :]
    assert "1 image" in reasoning
    with Image.open(DATA / "chelsea.png") as image:
        width, height = image.size
    vector = sent_vector(echo_proxy, messages)
    lines = answer.splitlines()
    assert lines[0] == "clip-proxy echo: 1 image."
    assert lines[1] == (
        f"image 1 (this turn): {width}x{height} px, a 768-value vector in "
        f"{len(vector):,} characters."
    )
    assert "'What is in this picture?'" in answer
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_without_stream_one_json_completion(echo_proxy: ProxyServer) -> None:
    history = [
        image_message(data_url(DATA / "coffee.png"), "and this?"),
        {"role": "assistant", "content": "A cup.", "reasoning_content": "thinking"},
        image_message(data_url(DATA / "rocket.jpg"), "compare them"),
    ]
    completion = sdk(echo_proxy).chat.completions.create(
        model="deepseek-r1",
        messages=history,  # type: ignore[arg-type]
    )
    assert completion.object == "chat.completion" and completion.model == "deepseek-r1"
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content", "").startswith("The proxy sent me 2 images")
    assert message.content is not None
    lines = message.content.splitlines()
    assert lines[0] == "clip-proxy echo: 2 images."
    assert lines[1].startswith("image 1 (an earlier turn): ")
    assert lines[2].startswith("image 2 (this turn): ")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_labels_and_the_content_part_format_are_accounted_for(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(
        upstream_base_url="echo",
        labels_top_k=2,
        prompt_format="content_part",
    )
    reply = httpx.post(
        proxy.url + CHAT,
        json={"messages": [image_message(data_url(DATA / "astronaut.png"))]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    content = reply.json()["choices"][0]["message"]["content"]
    assert content.startswith("clip-proxy echo: 1 image.\n")
    image_line = content.splitlines()[1]
    assert "labels: " in image_line and "768-value vector" in image_line


def test_models_and_forwarded_headers(echo_proxy: ProxyServer) -> None:
    client = sdk(echo_proxy)
    assert [model.id for model in client.models.list()] == ["deepseek-r1"]
    assert client.models.retrieve("deepseek-r1").owned_by == "clip-proxy-echo"
    reply = httpx.post(
        echo_proxy.url + CHAT,
        json={"messages": [{"role": "user", "content": "hello"}]},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        timeout=30,
    )
    content = reply.json()["choices"][0]["message"]["content"]
    assert content.startswith("clip-proxy echo: 0 images.")
    assert "Headers beyond the usual: traceparent, x-request-id." in content


def test_the_account_reads_words_references_and_either_format() -> None:
    vector = ",".join(["0.123456"] * 8)
    messages = [
        {"role": "user", "content": '<retain_image_emb ref="sha256:ab12"/>\nbefore'},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {
                    "type": "image_embedding",
                    "image_embedding": {"embedding": vector, "format": "clip_vector_v1"},
                },
                {"type": "text", "text": f'<image labels="cat, sofa">{vector}</image>'},
                {"type": "text", "text": "<image>\ntext: OPEN 24H\ncaption: a shop\n</image>"},
            ],
        },
    ]
    images = received_images(messages)
    assert [(image.retained, image.vector_values) for image in images] == [
        (True, 0),
        (False, 8),
        (False, 8),
        (False, 0),
    ]
    assert images[0].reference == "sha256:ab12"
    assert images[2].words == "labels: cat, sofa"
    assert images[3].words == "text: OPEN 24H caption: a shop"
    _, text = account({"model": "m", "messages": messages}, ["10x20"], [])
    assert text.splitlines()[:2] == [
        "clip-proxy echo: 4 images.",
        "image 1 (an earlier turn): 10x20 px, a reference (sha256:ab12) instead of its vector.",
    ]
    assert f"a 8-value vector in {len(vector)} characters" in text
    assert "image 4 (this turn): text: OPEN 24H caption: a shop, no vector." in text
