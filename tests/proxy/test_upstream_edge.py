"""The upstream edge through a real proxy, as a user meets it: private CAs and mTLS, egress
proxies from the environment or the settings, image fetching through a proxy (SSRF rules
first), cut streams, non-SSE answers, pings only between events, the key scrubbed from
relayed errors, a gzip bomb, and stale pooled connections.

Every server is real and on loopback: TLS upstreams with certificates openssl made in a temp
dir (tests/tls_certs.py), a CONNECT egress proxy (tests/egress_proxy.py).
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.egress_proxy import EgressProxy, via_test_name
from tests.helpers import DRY_RUN, ProxyServer, free_port, image_message, metric_value, serving
from tests.proxy.test_fetch import Handler, ImageHost
from tests.tls_certs import Pki, make_pki
from tests.upstream_server import FakeUpstream, Reply, Wire

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
KEY = "sk-upstream-secret"  # what proxy_settings gives every test proxy
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"  # close-delimited
EVENT = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_upstream(pki: Pki) -> Iterator[FakeUpstream]:
    with FakeUpstream(ssl_context=pki.server_context()) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_upstream(pki: Pki) -> Iterator[FakeUpstream]:
    with FakeUpstream(ssl_context=pki.server_context(require_client_cert=True)) as server:
        yield server


@pytest.fixture
def egress() -> Iterator[EgressProxy]:
    with EgressProxy() as proxy:
        yield proxy


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine running the tests, in either case."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def chat(proxy: ProxyServer, **body: object) -> httpx.Response:
    return httpx.post(proxy.url + CHAT, json={"messages": HELLO, **body}, timeout=20)


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def streamed_text(proxy: ProxyServer) -> str:
    client = sdk(proxy)
    stream = client.chat.completions.create(model="deepseek-r1", messages=HELLO, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# TLS ---------------------------------------------------------------------------------------


def test_a_private_ca_is_refused_without_its_file_and_the_problem_is_named(
    start_proxy: Callable[..., ProxyServer], tls_upstream: FakeUpstream
) -> None:
    tls_upstream.reset()
    proxy = start_proxy(upstream_base_url=tls_upstream.base_url, upstream_retry_base_s=0.05)
    error = error_of(chat(proxy), 502)
    assert error["code"] == "upstream_tls_error"
    assert "certificate verify failed" in str(error["message"])
    assert "issuer" in str(error["message"])  # unable to get local issuer certificate
    assert tls_upstream.requests == []
    # Never retried: the certificate would fail the same way again.
    assert (
        metric_value(proxy.url, "clip_proxy_upstream_retries_total", reason="upstream_tls_error")
        == 0
    )


def test_a_private_ca_works_with_upstream_ca_file(
    start_proxy: Callable[..., ProxyServer], tls_upstream: FakeUpstream, pki: Pki
) -> None:
    proxy = start_proxy(upstream_base_url=tls_upstream.base_url, upstream_ca_file=pki.ca)
    assert streamed_text(proxy) == "A cat on a sofa."
    assert tls_upstream.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_ssl_cert_file_keeps_working(
    start_proxy: Callable[..., ProxyServer],
    tls_upstream: FakeUpstream,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    proxy = start_proxy(upstream_base_url=tls_upstream.base_url)
    assert chat(proxy).status_code == 200


def test_mtls_with_a_client_certificate(
    start_proxy: Callable[..., ProxyServer], mtls_upstream: FakeUpstream, pki: Pki
) -> None:
    proxy = start_proxy(
        upstream_base_url=mtls_upstream.base_url,
        upstream_ca_file=pki.ca,
        upstream_client_cert=pki.client_cert,
        upstream_client_key=pki.client_key,
    )
    assert streamed_text(proxy) == "A cat on a sofa."


def test_mtls_without_a_client_certificate_says_what_may_be_missing(
    start_proxy: Callable[..., ProxyServer], mtls_upstream: FakeUpstream, pki: Pki
) -> None:
    """TLS 1.3 refuses a missing client certificate after the handshake, and asyncio
    reports the server's alert as a plain close: not a certificate *verification* failure
    (upstream_tls_error), but the message names the likely cause."""
    mtls_upstream.reset()
    proxy = start_proxy(
        upstream_base_url=mtls_upstream.base_url,
        upstream_ca_file=pki.ca,
        upstream_retry_base_s=0.05,
    )
    error = error_of(chat(proxy), 502)
    assert error["code"] == "upstream_unreachable"
    assert "CLIP_PROXY_UPSTREAM_CLIENT_CERT" in str(error["message"])
    assert mtls_upstream.requests == []


# Egress proxies ----------------------------------------------------------------------------


def test_https_proxy_from_the_environment_is_used(
    start_proxy: Callable[..., ProxyServer],
    tls_upstream: FakeUpstream,
    pki: Pki,
    egress: EgressProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", egress.url)
    proxy = start_proxy(
        upstream_base_url=via_test_name(tls_upstream.base_url), upstream_ca_file=pki.ca
    )
    assert streamed_text(proxy) == "A cat on a sofa."
    assert egress.requests == [f"CONNECT upstream.test:{tls_upstream.port}"]


def test_a_loopback_upstream_never_goes_through_an_egress_proxy(
    start_proxy: Callable[..., ProxyServer],
    tls_upstream: FakeUpstream,
    pki: Pki,
    egress: EgressProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    # The embedded echo and a model server beside the proxy are on loopback: an egress proxy
    # would reach its own loopback (or see the request), whatever the environment says.
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        clean_proxy_env.setenv(variable, egress.url)
    proxy = start_proxy(upstream_base_url=tls_upstream.base_url, upstream_ca_file=pki.ca)
    served_before = len(tls_upstream.requests)
    assert streamed_text(proxy) == "A cat on a sofa."
    # (the test's own httpx client reads HTTP_PROXY too: only the upstream's port matters)
    assert [line for line in egress.requests if f":{tls_upstream.port}" in line] == []
    assert len(tls_upstream.requests) == served_before + 1


def test_no_proxy_bypasses_the_environment_proxy(
    start_proxy: Callable[..., ProxyServer],
    tls_upstream: FakeUpstream,
    pki: Pki,
    egress: EgressProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", egress.url)
    clean_proxy_env.setenv("NO_PROXY", "localhost,upstream.test")
    proxy = start_proxy(
        upstream_base_url=via_test_name(tls_upstream.base_url),
        upstream_ca_file=pki.ca,
        upstream_retry_base_s=0.05,
    )
    # Bypassed, the proxy looks `upstream.test` up itself: only the egress proxy knows that
    # name, so the direct attempt fails on DNS, which shows that it went direct.
    error = error_of(chat(proxy), 502)
    assert error["code"] == "upstream_unreachable"
    assert egress.requests == []


def test_upstream_proxy_setting_overrides_the_environment(
    start_proxy: Callable[..., ProxyServer],
    tls_upstream: FakeUpstream,
    pki: Pki,
    egress: EgressProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing there
    proxy = start_proxy(
        upstream_base_url=via_test_name(tls_upstream.base_url),
        upstream_ca_file=pki.ca,
        upstream_proxy=egress.url,
    )
    assert chat(proxy).status_code == 200
    assert egress.requests == [f"CONNECT upstream.test:{tls_upstream.port}"]


def test_an_http_upstream_goes_through_the_proxy_in_absolute_form(
    start_proxy: Callable[..., ProxyServer],
    upstream: FakeUpstream,
    egress: EgressProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    named = via_test_name(upstream.base_url)
    proxy = start_proxy(upstream_base_url=named, upstream_proxy=egress.url)
    assert chat(proxy).status_code == 200
    assert egress.requests == [f"POST {named}/chat/completions"]


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    with serving(ImageHost(("127.0.0.1", 0), Handler)) as server:
        yield server


def test_fetch_proxy_is_opt_in_and_the_ssrf_rules_run_first(
    start_proxy: Callable[..., ProxyServer],
    egress: EgressProxy,
    image_host: ImageHost,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    cat = f"http://127.0.0.1:{image_host.server_address[1]}/cat.png"
    request = {"messages": [image_message(cat)]}

    def fetched() -> list[str]:  # (the tests' own httpx calls go through it too)
        return [line for line in egress.requests if line.endswith("/cat.png")]

    # The environment alone never sends image fetches through a proxy.
    clean_proxy_env.setenv("HTTP_PROXY", egress.url)
    direct = start_proxy(fetch_allow_networks="127.0.0.0/8")
    response = httpx.post(direct.url + CHAT, json=request, headers=DRY_RUN, timeout=30)
    assert response.status_code == 200
    assert fetched() == []
    assert image_host.connections == 1
    # Opted in: fetched through the proxy, asked for the checked address.
    proxied = start_proxy(fetch_allow_networks="127.0.0.0/8", fetch_proxy=egress.url)
    response = httpx.post(proxied.url + CHAT, json=request, headers=DRY_RUN, timeout=30)
    assert response.status_code == 200
    assert fetched() == [f"GET {cat}"]
    # Loopback not allowed: refused before anything reaches the proxy.
    strict = start_proxy(fetch_proxy=egress.url)
    response = httpx.post(strict.url + CHAT, json=request, headers=DRY_RUN, timeout=30)
    assert error_of(response, 400)["code"] == "forbidden_url"
    assert fetched() == [f"GET {cat}"]
    assert image_host.connections == 2


# Stream integrity --------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["fin", "rst"])
def test_a_cut_close_delimited_stream_ends_with_a_truncation_event(
    proxy: ProxyServer, upstream: FakeUpstream, end: str
) -> None:
    before = metric_value(
        proxy.url, "clip_proxy_stream_duration_seconds_count", outcome="truncated", dialect="chat"
    )
    upstream.script(Reply(wire=Wire((SSE_HEAD + EVENT, 0.1), end=end)))
    with httpx.stream("POST", proxy.url + CHAT, json={"messages": HELLO, "stream": True}) as reply:
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert len(events) == 2
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    after = metric_value(
        proxy.url, "clip_proxy_stream_duration_seconds_count", outcome="truncated", dialect="chat"
    )
    assert after - before == 1
    # The SDK no longer "ends normally": it raises.
    upstream.script(Reply(wire=Wire((SSE_HEAD + EVENT, 0.1), end=end)))
    with pytest.raises(openai.APIError, match="incomplete"):
        streamed_text(proxy)


def test_html_to_a_stream_request_is_a_bad_response(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.script(
        Reply(raw_body=b"<html>down for maintenance</html>", headers={"content-type": "text/html"})
    )
    error = error_of(chat(proxy, stream=True), 502)
    assert error["code"] == "upstream_bad_response"
    assert "text/html" in str(error["message"])


def test_pings_go_out_only_between_events(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(ping_interval_s=1)
    first_half = b'data: {"id": "c", "o'
    second_half = b'bject": "chat.completion.chunk", "choices": []}\n\n'
    upstream.script(
        Reply(
            wire=Wire(
                (SSE_HEAD + first_half, 2.5, second_half, 2.5, b"data: [DONE]\n\n"),
                end="fin",
            )
        )
    )
    with httpx.stream("POST", proxy.url + CHAT, json={"messages": HELLO, "stream": True}) as reply:
        body = reply.read().decode()
    blocks = [block for block in body.split("\n\n") if block]
    assert blocks.count(": ping") >= 1  # the pause between events was pinged...
    events = [block for block in blocks if block != ": ping"]
    # ...and the pause inside the first event was not: it arrived whole.
    assert events == [
        'data: {"id": "c", "object": "chat.completion.chunk", "choices": []}',
        "data: [DONE]",
    ]
    assert body.index(": ping") > body.index("choices")


# Secrets and limits ------------------------------------------------------------------------


def test_an_upstream_401_quoting_the_key_is_scrubbed(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    quoted = {
        "error": {
            "message": f"Incorrect API key provided: Bearer {KEY}. Key {KEY} is revoked.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    upstream.script(Reply(status=401, body=quoted))
    response = chat(proxy)
    assert response.status_code == 401
    assert KEY not in response.text
    assert all(KEY not in value for value in response.headers.values())
    assert response.json()["error"]["message"] == (
        "Incorrect API key provided: Bearer [redacted]. Key [redacted] is revoked."
    )
    # Not JSON: the wrapped text is scrubbed too; and a Retry-After quoting it.
    upstream.script(
        Reply(status=429, raw_body=f"bad key {KEY}".encode(), headers={"Retry-After": f"{KEY}"})
    )
    response = chat(proxy)
    assert KEY not in response.text
    assert all(KEY not in value for value in response.headers.values())


def test_a_successful_answer_echoing_the_key_is_scrubbed(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    """A 2xx read whole (a completion, the model list) that quotes the key, as a debugging
    upstream or a misconfigured base URL would, reaches the client without it."""
    echoed = {"id": "c", "object": "chat.completion", "note": f"you sent Bearer {KEY}"}
    upstream.script(Reply(body=echoed))
    response = chat(proxy)
    assert response.status_code == 200
    assert KEY not in response.text
    assert response.json()["note"] == "you sent Bearer [redacted]"


def proc_status_bytes(field: str) -> int:
    """A size from this process's /proc status (`VmHWM`, `VmRSS`), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def gzip_bomb(decoded_bytes: int) -> bytes:
    """A gzip body that decodes to `decoded_bytes` zeros, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1024 * 1024)
    parts = [packer.compress(block) for _ in range(decoded_bytes // len(block))]
    return b"".join([*parts, packer.flush()])


def test_a_gzip_bomb_stops_at_the_body_cap(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy()  # the default cap, 32 MiB
    bomb = gzip_bomb(512 * 1024 * 1024)
    assert len(bomb) < 1_000_000
    # The proxy runs in this process: its peak RSS, reset now (the lifetime peak of the
    # test process would hide any growth below an earlier test's high mark).
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = proc_status_bytes("VmHWM")
    upstream.script(Reply(raw_body=bomb, headers={"content-encoding": "gzip"}))
    error = error_of(chat(proxy), 502)
    assert error["code"] == "upstream_response_too_large"
    grown = proc_status_bytes("VmHWM") - rss_before
    assert grown < 256 * 1024 * 1024, f"RSS peak grew by {grown / 2**20:.0f} MiB"


def test_a_stale_pooled_connection_is_retried_at_once(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(upstream_retry_base_s=1.0)  # any backoff would show
    latencies = []
    for _ in range(7):
        assert chat(proxy).status_code == 200  # leaves a connection in the pool
        upstream.script(Reply(drop="fin"))  # reused: the request is read, then dropped
        started = time.perf_counter()
        assert chat(proxy).status_code == 200
        latencies.append(time.perf_counter() - started)
    # No backoff: a retry after the 1 s backoff would take >= 1 s. Half of that tolerates a
    # loaded machine (a loopback chat takes ~10 ms idle, ~50-90 ms beside two busy loops).
    assert statistics.median(latencies) < 0.5, latencies
    retries = metric_value(
        proxy.url, "clip_proxy_upstream_retries_total", reason="stale_connection"
    )
    assert retries == 7
    assert (
        metric_value(proxy.url, "clip_proxy_upstream_retries_total", reason="upstream_unreachable")
        == 0
    )


def test_the_readme_documents_the_upstream_edge() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for phrase in ("HTTPS_PROXY", "NO_PROXY", "UPSTREAM_CA_FILE", "upstream_stream_truncated"):
        assert phrase in readme
