"""The upstream fault matrix: what a user sees when the DeepSeek side misbehaves.

Each case runs against the real test upstream and checks three things: the answer the
client gets (the real `openai` SDK or raw HTTP), how many attempts reached the upstream,
and that no upstream connection was left open (each connection the case opened is closed
or idle in the pool, where the next request reuses it).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers import ProxyServer, free_port, proxy_settings
from tests.processes import scaled
from tests.upstream_server import FakeUpstream, Reply

RATE_LIMITED = {
    "error": {"message": "slow down", "type": "rate_limit", "param": None, "code": "429"}
}
UNAVAILABLE = {"error": {"message": "busy", "type": "server_error", "param": None, "code": "503"}}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def fault_proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    """Fast backoff and a 1 s read timeout, so the matrix runs in seconds."""
    settings = proxy_settings(
        test_model_dir,
        upstream.base_url,
        upstream_retry_base_s=0.05,
        upstream_read_timeout_s=1.0,
        ping_interval_s=0,
    )
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def client(proxy: ProxyServer) -> openai.OpenAI:
    # The SDK's own retries are off: the attempts counted are the proxy's.
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def settle(upstream: FakeUpstream, opened_before: int, *, idle_allowed: int = 1) -> None:
    """Every connection opened since `opened_before` is closed, but for at most
    `idle_allowed` kept alive in the proxy's pool."""
    deadline = time.monotonic() + scaled(2)
    while True:
        opened = range(opened_before + 1, upstream.connections_opened + 1)
        still_open = [c for c in opened if c not in upstream.closed_connections]
        if len(still_open) <= idle_allowed or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(still_open) <= idle_allowed, f"upstream connections left open: {still_open}"


def chat_requests(upstream: FakeUpstream) -> list[float]:
    return [r.received_at for r in upstream.requests if r.path.endswith("/chat/completions")]


def test_429_with_retry_after_then_200(fault_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    upstream.script(Reply(status=429, body=RATE_LIMITED, headers={"Retry-After": "1"}), Reply())
    completion = client(fault_proxy).chat.completions.create(model="deepseek-r1", messages=HELLO)
    assert completion.choices[0].message.content == "A cat on a sofa."
    sent = chat_requests(upstream)
    assert len(sent) == 2
    assert sent[1] - sent[0] >= 0.95, "Retry-After: 1 was not honoured"
    settle(upstream, opened)
    # The retry went over the same kept-alive connection: the 429's body was read.
    assert upstream.requests[0].connection == upstream.requests[1].connection


def test_429_asking_too_long_is_relayed_with_retry_after(
    fault_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(status=429, body=RATE_LIMITED, headers={"Retry-After": "120"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client(fault_proxy).chat.completions.create(model="deepseek-r1", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "120"
    assert caught.value.body == RATE_LIMITED["error"]
    assert len(chat_requests(upstream)) == 1


def test_503_twice_then_200(fault_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    upstream.script(Reply(status=503, body=UNAVAILABLE), Reply(status=503, body=UNAVAILABLE))
    stream = client(fault_proxy).chat.completions.create(
        model="deepseek-r1", messages=HELLO, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "A cat on a sofa."
    assert len(chat_requests(upstream)) == 3
    settle(upstream, opened)


def test_503_past_the_retry_budget_is_relayed(
    fault_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.script(*[Reply(status=503, body=UNAVAILABLE)] * 3)
    response = httpx.post(
        fault_proxy.url + "/v1/chat/completions", json={"messages": HELLO}, timeout=10
    )
    assert response.status_code == 503
    assert response.json() == UNAVAILABLE
    assert len(chat_requests(upstream)) == 3  # the first try and two retries


def test_400_is_not_retried(fault_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    bad = {
        "error": {
            "message": "bad model",
            "type": "invalid_request_error",
            "param": None,
            "code": "400",
        }
    }
    upstream.script(Reply(status=400, body=bad))
    with pytest.raises(openai.BadRequestError):
        client(fault_proxy).chat.completions.create(model="nope", messages=HELLO)
    assert len(chat_requests(upstream)) == 1


def test_connection_refused_is_502_after_retries(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    proxy = start_proxy(upstream_base_url=dead, upstream_retry_base_s=0.05)
    response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": HELLO}, timeout=10)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert set(error) == {"message", "type", "param", "code"}
    assert "sk-upstream-secret" not in response.text
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'clip_proxy_upstream_retries_total{reason="upstream_unreachable"} 2.0' in metrics


def test_stall_before_headers_is_504_and_the_connection_closed(
    fault_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    opened = upstream.connections_opened
    upstream.script(Reply(stall_before_headers_s=5))
    started = time.monotonic()
    response = httpx.post(
        fault_proxy.url + "/v1/chat/completions",
        json={"messages": HELLO, "stream": True},
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert 0.9 <= elapsed < 3, "the 1 s read timeout decides, and a stall is not retried"
    assert len(chat_requests(upstream)) == 1
    settle(upstream, opened, idle_allowed=0)


def test_reset_mid_stream_ends_with_an_error_event(
    fault_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    opened = upstream.connections_opened
    # Paced like tokens: aiohttp raises a reset before handing over bytes that arrived in
    # the same read, so chunks sent back to back with the reset would be lost.
    upstream.script(Reply(reset_after_chunks=3, chunk_delay_s=0.05))
    with httpx.stream(
        "POST",
        fault_proxy.url + "/v1/chat/completions",
        json={"messages": HELLO, "stream": True},
        timeout=5,
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == 4  # three relayed chunks, then the error
    error = json.loads(events[-1][len("data: ") :])["error"]
    # Was upstream_unreachable; a cut stream now says so (issue 11).
    assert error["code"] == "upstream_stream_truncated"
    assert len(chat_requests(upstream)) == 1  # bytes went out: never retried
    settle(upstream, opened, idle_allowed=0)


def test_reset_mid_stream_through_the_sdk(fault_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(reset_after_chunks=3))
    stream = client(fault_proxy).chat.completions.create(
        model="deepseek-r1", messages=HELLO, stream=True
    )
    with pytest.raises(openai.APIError, match="closed the connection"):
        for _ in stream:
            pass


def test_upstream_keepalive_comments_pass_through(
    fault_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    events = [
        ": keep-alive",
        '{"choices": [{"index": 0, "delta": {"content": "hi"}}]}',
        ": keep-alive",
        "[DONE]",
    ]
    upstream.script(Reply(events=events))
    with httpx.stream(
        "POST",
        fault_proxy.url + "/v1/chat/completions",
        json={"messages": HELLO, "stream": True},
        timeout=5,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines == [
        ": keep-alive",
        'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}',
        ": keep-alive",
        "data: [DONE]",
    ]


def test_pings_while_the_model_thinks(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(ping_interval_s=0.2)
    upstream.script(Reply(first_chunk_delay_s=1.0))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"messages": HELLO, "stream": True},
        timeout=5,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert lines[:first_data].count(": ping") >= 3  # about one per 0.2 s of silence
    assert ": ping" not in lines[first_data:]  # chunks flowing: no pings between them
    assert lines[-1] == "data: [DONE]"
    # The SDK ignores comments: the same stream reads as usual.
    upstream.script(Reply(first_chunk_delay_s=0.5))
    stream = client(proxy).chat.completions.create(model="deepseek-r1", messages=HELLO, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "A cat on a sofa."


def test_rate_limit_toward_the_upstream(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    import concurrent.futures

    proxy = start_proxy(upstream_rate_limit_rps=2, upstream_rate_limit_wait_s=0.6)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.post(
                    proxy.url + "/v1/chat/completions", json={"messages": HELLO}, timeout=10
                ),
                range(6),
            )
        )
    statuses = sorted(r.status_code for r in responses)
    # Slots at 0 and 0.5 s fit in a 0.6 s wait; later ones are refused at once. (Six
    # requests would have to arrive spread over 2 s for fewer than two to be refused: a
    # loaded machine's thread start-up does not spread them that far.)
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 2
    assert set(statuses) <= {200, 429}
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
    sent = sorted(chat_requests(upstream))
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap >= 0.45 for gap in gaps), gaps  # 2/s means half a second apart
