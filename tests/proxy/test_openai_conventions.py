"""Conventions OpenAI clients rely on: GET /v1/models/{id}, `dimensions` and token arrays
on /v1/embeddings, a bare-string `image_url`, form booleans, and the trace context sent on
to the upstream (never the client's credentials)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from tests.helpers import DATA, DRY_RUN, ProxyServer, data_url
from tests.upstream_server import FakeUpstream, Reply

CHAT = "/v1/chat/completions"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def test_a_model_is_retrieved_from_the_upstream(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(body={"id": "deepseek-r1", "object": "model", "owned_by": "x"}))
    model = sdk(proxy).models.retrieve("deepseek-r1")
    assert model.id == "deepseek-r1"
    assert upstream.requests[-1].method == "GET"
    assert upstream.requests[-1].path.endswith("/models/deepseek-r1")


def test_a_model_the_upstream_cannot_fetch_is_found_in_its_list(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    not_found = {"error": {"message": "no such route", "type": "invalid_request_error"}}
    upstream.script(Reply(status=404, body=not_found))
    model = sdk(proxy).models.retrieve("deepseek-r1")
    assert model.id == "deepseek-r1" and model.object == "model"
    assert [request.path.rsplit("/", 1)[-1] for request in upstream.requests[-2:]] == [
        "deepseek-r1",
        "models",
    ]
    upstream.script(Reply(status=404, body=not_found))
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(proxy).models.retrieve("gpt-4o")
    error = raised.value.response.json()["error"]
    assert error["code"] == "model_not_found" and "gpt-4o" in error["message"]


def test_a_model_id_with_a_slash_reaches_the_upstream(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(body={"id": "deepseek-ai/DeepSeek-R1", "object": "model"}))
    reply = httpx.get(proxy.url + "/v1/models/deepseek-ai/DeepSeek-R1", timeout=10)
    assert reply.status_code == 200 and reply.json()["id"] == "deepseek-ai/DeepSeek-R1"
    assert upstream.requests[-1].path.endswith("/models/deepseek-ai/DeepSeek-R1")


def test_dimensions_must_be_the_models_width(proxy: ProxyServer) -> None:
    client = sdk(proxy)
    # The test checkpoint's projection is 768 wide, as ViT-L/14's.
    same = client.embeddings.create(model="clip", input="a cat", dimensions=768)
    assert len(same.data[0].embedding) == 768
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="clip", input="a cat", dimensions=256)
    error = raised.value.response.json()["error"]
    assert error["param"] == "dimensions" and error["code"] == "unsupported_dimensions"
    assert "256" in error["message"] and "768" in error["message"]
    image = httpx.post(
        proxy.url + "/v1/embeddings",
        json={"input": data_url(DATA / "coffee.png"), "dimensions": 512},
        timeout=30,
    )
    assert image.status_code == 400 and image.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3, 4]]], ids=["ids", "batches"])
def test_token_arrays_are_refused_with_the_langchain_way_out(
    proxy: ProxyServer, tokens: list[object]
) -> None:
    reply = httpx.post(proxy.url + "/v1/embeddings", json={"input": tokens}, timeout=10)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "input[0]" and error["code"] == "token_input_unsupported"
    assert "check_embedding_ctx_length=False" in error["message"]


def test_a_bare_string_image_url_is_an_image(proxy: ProxyServer) -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": data_url(DATA / "coffee.png")},
        ],
    }
    reply = httpx.post(proxy.url + CHAT, json={"messages": [message]}, headers=DRY_RUN, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["messages"][0]["content"].startswith("What is this?\n<image>")


@pytest.mark.parametrize(
    ("value", "streamed"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_form_booleans(
    proxy: ProxyServer, upstream: FakeUpstream, value: str, streamed: bool
) -> None:
    reply = httpx.post(
        proxy.url + CHAT,
        data={"prompt": "hi", "stream": value},
        files={"image": ("c.png", (DATA / "camera.png").read_bytes(), "image/png")},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert upstream.requests[-1].json["stream"] is streamed
    assert reply.headers["content-type"].startswith(
        "text/event-stream" if streamed else "application/json"
    )


def test_a_form_boolean_that_is_not_one_is_a_400(proxy: ProxyServer) -> None:
    reply = httpx.post(proxy.url + CHAT, data={"prompt": "hi", "stream": "maybe"}, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "stream"


def test_trace_context_goes_upstream_and_credentials_do_not(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    headers = {
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=abc",
        "Authorization": "Bearer client-key",
        "Cookie": "session=secret",
        "X-Tenant": "acme",
    }
    reply = httpx.post(
        proxy.url + CHAT,
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=10,
    )
    assert reply.status_code == 200
    sent = upstream.requests[-1].headers
    assert sent["traceparent"] == TRACEPARENT and sent["tracestate"] == "vendor=abc"
    assert sent["authorization"] == "Bearer sk-upstream-secret"  # the proxy's key, not the client's
    assert "cookie" not in sent
    assert "x-tenant" not in sent  # not listed in CLIP_PROXY_FORWARD_HEADERS
    # GET /v1/models carries the trace context too.
    httpx.get(proxy.url + "/v1/models", headers={"traceparent": TRACEPARENT}, timeout=10)
    assert upstream.requests[-1].headers["traceparent"] == TRACEPARENT


def test_an_operator_lists_more_headers_to_forward(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(forward_headers="X-Tenant, baggage")
    httpx.post(
        proxy.url + CHAT,
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Tenant": "acme", "Baggage": "user=1", "X-Other": "no"},
        timeout=10,
    ).raise_for_status()
    sent = upstream.requests[-1].headers
    assert sent["x-tenant"] == "acme" and sent["baggage"] == "user=1"
    assert "x-other" not in sent
