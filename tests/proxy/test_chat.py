"""A user's view of /v1/chat/completions: the openai SDK and curl against a real proxy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionUserMessageParam

from tests.helpers import DATA, PHOTOS, ProxyServer, cosine, data_url, parse_vector
from tests.upstream_server import FakeUpstream, Reply

IMAGE_TAG = re.compile(r"<image>([-0-9.,]+)</image>")
RETAIN_TAG = re.compile(r"<retain_image_emb>([-0-9.,]+)</retain_image_emb>")


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)


def image_message(text: str, *photos: str) -> ChatCompletionUserMessageParam:
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(DATA / p)}} for p in photos]
    return {"role": "user", "content": parts}


def test_sdk_stream_relays_reasoning_and_answer(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    stream = sdk(proxy).chat.completions.create(
        model="deepseek-r1",
        messages=[image_message("What is in this picture?", "chelsea.png")],
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, answer, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            answer.append(choice.delta.content or "")
    assert "".join(reasoning) == "The user sent a cat."
    assert "".join(answer) == "A cat on a sofa."
    assert usage is not None and usage.total_tokens == 17

    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    body = sent.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    content = body["messages"][0]["content"]
    assert content.startswith("What is in this picture?\n<image>")
    assert len(IMAGE_TAG.findall(content)) == 1


def test_sdk_non_stream_returns_upstream_json(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    reply = sdk(proxy).chat.completions.create(
        model="deepseek-r1",
        messages=[image_message("Describe it", "coffee.png")],
    )
    assert reply.choices[0].message.content == "A cat on a sofa."
    assert reply.choices[0].message.reasoning_content == "The user sent a cat."  # type: ignore[attr-defined]
    assert "stream" not in upstream.requests[-1].json


def test_upstream_vector_matches_seed_reference(
    proxy: ProxyServer, upstream: FakeUpstream, reference_vectors: dict[str, np.ndarray]
) -> None:
    httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [image_message("all photos", *PHOTOS)]},
        timeout=60,
    ).raise_for_status()
    content = upstream.requests[-1].json["messages"][0]["content"]
    vectors = IMAGE_TAG.findall(content)
    assert len(vectors) == len(PHOTOS)
    for photo, text in zip(PHOTOS, vectors, strict=True):
        values = text.split(",")
        assert len(values) == 768
        assert all(re.fullmatch(r"-?\d\.\d{6}", value) for value in values)
        assert cosine(parse_vector(text), reference_vectors[photo]) >= 0.999, photo


def test_stream_is_incremental(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(chunk_delay_s=0.3))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    ) as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        first_received = time.monotonic()
        rest = [line for line in lines if line]
    assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
    assert rest[-1] == "data: [DONE]"
    # The upstream sent its last chunk ~2 s after its first; the client had the first by then.
    assert first_received < upstream.chunk_sent_at[-1] - 1.0


def test_upstream_comments_and_unknown_events_pass_byte_for_byte(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    events = [": keep-alive", '{"choices":[{"index":0,"delta":{"content":"x"}}]}', "[DONE]"]
    upstream.script(Reply(events=events))
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert response.text == (
        ': keep-alive\n\ndata: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
        "data: [DONE]\n\n"
    )


def test_history_is_rewritten_with_retain_tags_and_no_reasoning(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "system", "content": "You see images as CLIP vectors."},
        image_message("What is this?", "chelsea.png"),
        {"role": "assistant", "content": "A cat.", "reasoning_content": "It looks feline."},
        image_message("And this one, compared to the first?", "coffee.png"),
    ]
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "deepseek-r1",
            "messages": messages,
            "temperature": 0.3,
            "max_tokens": 1000,
            "top_p": 0.9,
            "vendor_extension": {"keep": [1, 2]},
        },
        timeout=60,
    )
    assert response.status_code == 200
    body = upstream.requests[-1].json
    assert body["temperature"] == 0.3 and body["max_tokens"] == 1000 and body["top_p"] == 0.9
    assert body["vendor_extension"] == {"keep": [1, 2]}
    system, first, assistant, last = body["messages"]
    assert system == {"role": "system", "content": "You see images as CLIP vectors."}
    assert assistant == {"role": "assistant", "content": "A cat."}
    assert first["content"].startswith("What is this?\n<retain_image_emb>")
    assert len(RETAIN_TAG.findall(first["content"])) == 1 and "<image>" not in first["content"]
    assert last["content"].startswith("And this one, compared to the first?\n<image>")


def test_content_part_format(start_proxy, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(prompt_format="content_part", embedding_decimals=4)
    httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [image_message("Describe", "camera.png")]},
        timeout=60,
    ).raise_for_status()
    text_part, image_part = upstream.requests[-1].json["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "Describe"}
    assert image_part["type"] == "image_embedding"
    assert image_part["image_embedding"]["format"] == "clip_vector_v1"
    values = image_part["image_embedding"]["embedding"].split(",")
    assert len(values) == 768 and all(re.fullmatch(r"-?\d\.\d{4}", v) for v in values)


def test_format_chosen_per_request_by_header(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    """The playground's Format choice: `X-Clip-Proxy-Format` overrides PROMPT_FORMAT for one
    request; a value that is not a format is a 400 naming the header."""
    url = proxy.url + "/v1/chat/completions"
    body = {"messages": [image_message("Describe", "camera.png")]}
    parts = httpx.post(url, json=body, headers={"X-Clip-Proxy-Format": "content_part"}, timeout=60)
    assert parts.status_code == 200, parts.text
    sent = upstream.requests[-1].json["messages"][0]["content"]
    assert [part["type"] for part in sent] == ["text", "image_embedding"]
    inline = httpx.post(url, json=body, timeout=60)  # the server's default again
    assert inline.status_code == 200
    assert IMAGE_TAG.search(upstream.requests[-1].json["messages"][0]["content"])
    bad = httpx.post(url, json=body, headers={"X-Clip-Proxy-Format": "xml"}, timeout=60)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "X-Clip-Proxy-Format"
    assert bad.json()["error"]["code"] == "invalid_format"
    assert len(upstream.requests) == 2


def test_default_model_is_filled_in(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    httpx.post(
        proxy.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    ).raise_for_status()
    assert upstream.requests[-1].json["model"] == "deepseek-r1"


def test_dry_run_answers_the_upstream_body_and_sends_nothing(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        headers={"X-Clip-Proxy-Dry-Run": "true"},
        json={"model": "m1", "messages": [image_message("look", "rocket.jpg")], "stream": True},
        timeout=60,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "m1" and body["stream"] is True
    assert IMAGE_TAG.search(body["messages"][0]["content"])
    assert upstream.requests == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_curl_multipart_upload_streams(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--fail-with-body",
            "-F",
            "model=deepseek-r1",
            "-F",
            "prompt=describe",
            "-F",
            "stream=true",
            "-F",
            "temperature=0.2",
            "-F",
            f"image=@{DATA / 'chelsea.png'}",
            "-F",
            f"image=@{DATA / 'rocket.jpg'}",
            proxy.url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [line[6:] for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    answer = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert answer == "A cat on a sofa."
    body = upstream.requests[-1].json
    assert body["stream"] is True and body["temperature"] == 0.2
    content = body["messages"][-1]["content"]
    assert content.startswith("describe\n<image>")
    assert len(IMAGE_TAG.findall(content)) == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_curl_multipart_with_messages_json(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?"},
    ]
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "-F",
            f"messages={json.dumps(messages)}",
            "-F",
            f"image=@{DATA / 'coffee.png'}",
            proxy.url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sent = upstream.requests[-1].json["messages"]
    assert sent[0] == {"role": "system", "content": "be brief"}
    assert sent[1]["content"].startswith("what is this?\n<image>")


def test_models_are_relayed(proxy: ProxyServer) -> None:
    models = sdk(proxy).models.list()
    assert [model.id for model in models] == ["deepseek-r1"]


def test_health_endpoints(proxy: ProxyServer) -> None:
    assert httpx.get(proxy.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["devices"] == ["cpu"]


def test_readyz_stays_503_when_the_model_cannot_load(start_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(wait_ready=False, clip_model=str(tmp_path / "missing"))
    time.sleep(0.5)
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"]
    assert ready.json()["error"]["code"] == "not_ready"
    # Text-only chat does not need the encoder; an image request says why it cannot run.
    text = httpx.post(
        proxy.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert text.status_code == 200
    image = httpx.post(
        proxy.url + "/v1/chat/completions", json={"messages": [image_message("x", "camera.png")]}
    )
    assert image.status_code == 503 and image.headers["retry-after"] == "5"
