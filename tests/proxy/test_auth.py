"""Client auth: every /v1/* call needs a configured key; health stays open; the upstream
key never leaks into a response, log line or metric."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers import ProxyServer, metric_value
from tests.upstream_server import FakeUpstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
UPSTREAM_KEY = "sk-upstream-secret"  # what conftest's proxy_settings configures


def test_keys_guard_v1_and_leave_health_open(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(api_keys="key-one,key-two")
    chat = proxy.url + "/v1/chat/completions"
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic a2V5LW9uZQ=="},
        {"Authorization": "Bearer key-on"},
        {"Authorization": "Bearer key-one2"},
    ):
        response = httpx.post(chat, json={"messages": HELLO}, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "authentication_error"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(proxy.url + "/v1/models").status_code == 401
    assert upstream.requests == []  # nothing unauthenticated went upstream
    for key in ("key-one", "key-two"):
        sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
        completion = sdk.chat.completions.create(model="deepseek-r1", messages=HELLO)
        assert completion.choices[0].message.content == "A cat on a sofa."
    # The client's key is not forwarded; the upstream sees the proxy's own key.
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    assert httpx.get(proxy.url + "/readyz").status_code == 200
    assert httpx.get(proxy.url + "/metrics").status_code == 200
    # Refusals count among the errors, by code, like every other error the proxy answers.
    assert metric_value(proxy.url, "clip_proxy_errors_total", type="invalid_api_key") == 6


def test_sdk_sees_an_authentication_error(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(api_keys="right")
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="deepseek-r1", messages=HELLO)


def test_keys_file_and_protected_metrics(
    start_proxy: Callable[..., ProxyServer], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team A\nfile-key\n\n")
    proxy = start_proxy(api_keys_file=str(keys), metrics_require_auth=True)
    assert httpx.get(proxy.url + "/metrics").status_code == 401
    good = {"Authorization": "Bearer file-key"}
    assert httpx.get(proxy.url + "/metrics", headers=good).status_code == 200
    assert httpx.get(proxy.url + "/v1/models", headers=good).status_code == 200
    assert httpx.get(proxy.url + "/healthz").status_code == 200


def test_no_keys_means_open(proxy: ProxyServer) -> None:
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 200


def test_upstream_key_never_leaks(
    start_proxy: Callable[..., ProxyServer],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.upstream_server import Reply

    proxy = start_proxy(upstream_retry_base_s=0.01)
    caplog.set_level(logging.DEBUG)
    upstream.script(
        Reply(status=401, raw_body=b"<html>denied</html>", headers={"content-type": "text/html"}),
        Reply(status=503, body={"error": "x"}),
        Reply(status=503, body={"error": "x"}),
        Reply(status=503, body={"error": "x"}),
        Reply(reset_after_chunks=2),
    )
    seen = []
    for stream in (False, False, True):
        seen.append(
            httpx.post(
                proxy.url + "/v1/chat/completions", json={"messages": HELLO, "stream": stream}
            ).text
        )
    seen.append(httpx.get(proxy.url + "/metrics").text)
    seen.append(httpx.get(proxy.url + "/openapi.json").text)
    seen += [record.getMessage() + str(record.__dict__) for record in caplog.records]
    assert len(upstream.requests) >= 5
    for text in seen:
        assert UPSTREAM_KEY not in text
