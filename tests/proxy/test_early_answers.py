"""An answer sent before the request body was read reaches the client: the proxy reads and
drops the rest of the body first and says `Connection: close`, so neither the client nor
its connection pool meets a reset."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai

from tests.helpers import ProxyServer, grew, metric_value, scrape

CHAT = "/v1/chat/completions"
LINGERED = "clip_proxy_lingering_closes_total"


def test_a_pooled_client_survives_413s(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(max_body_bytes=1024 * 1024)
    too_large = b'{"messages": [{"role": "user", "content": "' + b"x" * (4 * 1024 * 1024) + b'"}]}'
    before = scrape(proxy.url)
    with httpx.Client(timeout=60) as client:
        for _ in range(20):
            refused = client.post(
                proxy.url + CHAT, content=too_large, headers={"content-type": "application/json"}
            )
            assert refused.status_code == 413
            assert refused.headers["connection"] == "close"
            assert "CLIP_PROXY_MAX_BODY_BYTES" in refused.json()["error"]["message"]
            served = client.post(
                proxy.url + CHAT, json={"messages": [{"role": "user", "content": "hi"}]}
            )
            assert served.status_code == 200
    # Each 413 went out while the client was still sending its 4 MiB: a lingering close.
    after = scrape(proxy.url)
    assert grew(before, after, LINGERED, reason="payload_too_large") == 20
    assert grew(before, after, LINGERED, reason="memory_budget") == 0


def test_the_openai_sdk_reads_a_413_not_a_connection_error(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(max_body_bytes=1024 * 1024)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    with client:
        for _ in range(20):
            try:
                client.chat.completions.create(
                    model="deepseek-r1", messages=[{"role": "user", "content": "x" * 3_000_000}]
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 413
            else:
                raise AssertionError("a 3 MB body passed a 1 MiB limit")
            answer = client.chat.completions.create(
                model="deepseek-r1", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content


def test_a_refused_key_is_answered_with_connection_close(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(api_keys=["sk-right"])
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * (2 * 1024 * 1024) + b'"}]}'
    with httpx.Client(timeout=60) as client:
        for _ in range(5):
            refused = client.post(
                proxy.url + CHAT,
                content=body,
                headers={"content-type": "application/json", "authorization": "Bearer wrong"},
            )
            assert refused.status_code == 401
            assert refused.headers["connection"] == "close"
    assert metric_value(proxy.url, LINGERED, reason="invalid_api_key") == 5
