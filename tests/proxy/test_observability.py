"""What an operator and a user see of a request: metrics, request ids, Server-Timing.

Every check goes through a real proxy over real sockets to the fake upstream, with the
real `openai` SDK or real curl as the client, and reads the proxy's own `/metrics`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from app.metrics import Metrics
from app.runtime.lifecycle import refuse_worker_processes
from tests.helpers import (
    DATA,
    ProxyServer,
    data_url,
    exported_names,
    grew,
    sample,
    scrape,
    unique_png,
)
from tests.processes import scaled
from tests.upstream_server import FakeUpstream, Reply

CHAT = "/v1/chat/completions"

CONTRACT_METRICS = [
    "clip_proxy_gpu_memory_used_bytes",
    "clip_proxy_gpu_memory_total_bytes",
    "clip_proxy_request_duration_seconds",
    "clip_proxy_upstream_ttft_seconds",
    "clip_proxy_encode_duration_seconds",
    "clip_proxy_encode_queue_seconds",
    "clip_proxy_batch_size",
    "clip_proxy_cache_hits_total",
    "clip_proxy_cache_misses_total",
]
STAGE_METRICS = [
    "clip_proxy_gpu_memory_allocated_bytes",
    "clip_proxy_gpu_memory_reserved_bytes",
    "clip_proxy_requests_total",
    "clip_proxy_requests_in_flight",
    "clip_proxy_errors_total",
    "clip_proxy_images_total",
    "clip_proxy_image_fetch_seconds",
    "clip_proxy_image_decode_seconds",
    "clip_proxy_preprocess_seconds",
    "clip_proxy_upstream_ttfb_seconds",
    "clip_proxy_upstream_duration_seconds",
    "clip_proxy_upstream_responses_total",
    "clip_proxy_stream_duration_seconds",
    "clip_proxy_upstream_tokens_total",
    "clip_proxy_build_info",
]


def image_message(name: str | None = None) -> list[ChatCompletionMessageParam]:
    """One user message with a photo, or by default an image the cache has never seen."""
    url = data_url(DATA / name) if name else data_url(unique_png())
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


_clients: list[openai.OpenAI] = []


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def test_every_metric_has_help_and_type_without_a_gpu(proxy: ProxyServer) -> None:
    text = scrape(proxy.url)
    for name in CONTRACT_METRICS + STAGE_METRICS:
        base = name.removesuffix("_total")
        assert f"# HELP {name}" in text or f"# HELP {base}" in text, name
        assert f"# TYPE {name}" in text or f"# TYPE {base}" in text, name
    assert all(name.startswith("clip_proxy_") for name in exported_names(text))
    assert sample(text, "clip_proxy_build_info", version="0.1.0") == 1


def test_metrics_are_defined_once_in_one_registry() -> None:
    """Two apps in one process each get their own numbers (no global registry clash)."""
    first, second = Metrics(), Metrics()
    first.requests.labels(route=CHAT, status="2xx", dialect="chat").inc()
    assert sample(first.render().decode(), "clip_proxy_requests_total", route=CHAT) == 1
    assert sample(second.render().decode(), "clip_proxy_requests_total", route=CHAT) == 0


def test_streamed_image_request_is_measured_at_every_stage(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    before = scrape(proxy.url)
    stream = sdk(proxy).chat.completions.create(
        model="deepseek-r1",
        messages=image_message(),
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "A cat on a sofa."
    after = scrape(proxy.url)

    def rose(name: str, **labels: str) -> float:
        return grew(before, after, name, **labels)

    assert rose("clip_proxy_requests_total", route=CHAT, status="2xx") == 1
    assert rose("clip_proxy_request_duration_seconds_count", route=CHAT, status="2xx") == 1
    assert rose("clip_proxy_images_total", source="data_url") == 1
    for histogram in (
        "clip_proxy_image_decode_seconds_count",
        "clip_proxy_preprocess_seconds_count",
        "clip_proxy_encode_queue_seconds_count",
        "clip_proxy_batch_size_sum",
        "clip_proxy_upstream_ttfb_seconds_count",
        "clip_proxy_upstream_ttft_seconds_count",
    ):
        assert rose(histogram) == 1, histogram
    assert rose("clip_proxy_image_fetch_seconds_count", source="data_url") == 1
    assert rose("clip_proxy_stream_duration_seconds_count", outcome="complete", dialect="chat") == 1
    assert rose("clip_proxy_upstream_duration_seconds_count", mode="stream") == 1
    assert rose("clip_proxy_upstream_responses_total", code="200") == 1
    # The fake upstream's usage chunk says 10 prompt and 7 completion tokens.
    assert rose("clip_proxy_upstream_tokens_total", kind="prompt") == 10
    assert rose("clip_proxy_upstream_tokens_total", kind="completion") == 7
    # Time to first token is at least the time to the upstream's headers.
    ttft = rose("clip_proxy_upstream_ttft_seconds_sum")
    assert 0 < rose("clip_proxy_upstream_ttfb_seconds_sum") <= ttft


def test_json_reply_counts_its_usage_tokens(proxy: ProxyServer) -> None:
    before = scrape(proxy.url)
    reply = sdk(proxy).chat.completions.create(
        model="deepseek-r1", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    after = scrape(proxy.url)
    completion = "clip_proxy_upstream_tokens_total"
    assert grew(before, after, completion, kind="completion") == 7
    duration = "clip_proxy_upstream_duration_seconds_count"
    assert grew(before, after, duration, mode="json") == 1


def test_request_id_is_honoured_returned_and_sent_upstream(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    raw = sdk(proxy).chat.completions.with_raw_response.create(
        model="deepseek-r1",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-ID": "client-id-42"},
    )
    assert raw.headers["x-request-id"] == "client-id-42"
    assert upstream.requests[-1].headers["x-request-id"] == "client-id-42"


@pytest.mark.parametrize("incoming", [None, "", "bad id with spaces", "x" * 200, "a\tb"])
def test_missing_or_unsafe_request_id_is_replaced(proxy: ProxyServer, incoming: str | None) -> None:
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    response = httpx.get(proxy.url + "/v1/models", headers=headers, timeout=5)
    request_id = response.headers["x-request-id"]
    assert request_id != incoming
    assert len(request_id) == 32 and int(request_id, 16) >= 0


def test_error_body_carries_the_request_id_and_the_error_is_counted(proxy: ProxyServer) -> None:
    before = scrape(proxy.url)
    broken = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).chat.completions.create(
            model="deepseek-r1",
            messages=broken,  # type: ignore[arg-type]
            extra_headers={"X-Request-ID": "req-bad-image"},
        )
    error = caught.value
    assert error.request_id == "req-bad-image"  # the SDK reads the X-Request-ID header
    body = error.response.json()
    assert body["request_id"] == "req-bad-image"
    assert body["error"]["code"] == "invalid_image_format"
    after = scrape(proxy.url)
    errors = "clip_proxy_errors_total"
    assert grew(before, after, errors, type="invalid_image_format") == 1
    requests = "clip_proxy_requests_total"
    assert grew(before, after, requests, route=CHAT, status="4xx") == 1


def test_upstream_error_status_is_counted_by_code(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    before = scrape(proxy.url)
    # Retry-After past the proxy's retry cap: relayed at once instead of retried.
    upstream.script(
        Reply(
            status=429,
            body={"error": {"message": "slow down", "type": "rate"}},
            headers={"retry-after": "120"},
        )
    )
    with pytest.raises(openai.RateLimitError):
        sdk(proxy).chat.completions.create(
            model="deepseek-r1", messages=[{"role": "user", "content": "hi"}]
        )
    after = scrape(proxy.url)
    code = "clip_proxy_upstream_responses_total"
    assert grew(before, after, code, code="429") == 1
    errors = "clip_proxy_errors_total"
    assert grew(before, after, errors, type="upstream_status") == 1


def test_stream_broken_by_the_upstream_is_an_error_outcome(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    before = scrape(proxy.url)
    upstream.script(Reply(reset_after_chunks=3))
    with httpx.stream(
        "POST",
        proxy.url + CHAT,
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=10,
    ) as response:
        body = b"".join(response.iter_bytes())
    assert b'"error"' in body
    after = scrape(proxy.url)
    outcome = "clip_proxy_stream_duration_seconds_count"
    # A cut stream is `truncated`, its error `upstream_stream_truncated` (issue 11; they
    # were `error` and `upstream_unreachable`).
    assert grew(before, after, outcome, outcome="truncated", dialect="chat") == 1
    errors = "clip_proxy_errors_total"
    assert grew(before, after, errors, type="upstream_stream_truncated") == 1


def test_unknown_paths_share_one_route_label(proxy: ProxyServer) -> None:
    httpx.get(proxy.url + "/secret-user-path-123?key=abc", timeout=5)
    text = scrape(proxy.url)
    assert "secret-user-path" not in text and "abc" not in text.replace("# ", "")
    assert sample(text, "clip_proxy_requests_total", route="unmatched", status="4xx") >= 1


def test_server_timing_shows_the_stages_before_the_first_byte(proxy: ProxyServer) -> None:
    """What a user sees with curl: where a streamed image request spent its time."""
    payload = httpx.Request(
        "POST", "http://x", json={"messages": image_message(), "stream": True}
    ).content

    def server_timing() -> dict[str, float]:
        result = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "30",
             "-H", "Content-Type: application/json", "--data-binary", "@-", proxy.url + CHAT],
            input=payload, capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        headers = result.stdout.decode().lower()
        line = next(line for line in headers.splitlines() if line.startswith("server-timing:"))
        return {
            part.strip().split(";")[0]: float(part.split("dur=")[1].split(";")[0])
            for part in line.split(":", 1)[1].split(",")
        }

    stages = server_timing()
    # The same image again comes from the feature cache: no decode or encode to show.
    cached = server_timing()
    assert "encode" not in cached and "decode" not in cached and "fetch" in cached
    assert {"fetch", "decode", "preprocess", "encode", "upstream_ttfb", "proxy"} <= set(stages)
    assert all(value >= 0 for value in stages.values())
    # Every stage happened before the headers left.
    assert stages["proxy"] >= stages["upstream_ttfb"]
    assert stages["proxy"] >= stages["images"] >= stages["encode"]


def test_in_flight_counts_a_stream_while_it_lasts(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy()
    upstream.script(Reply(chunk_delay_s=0.3))
    first_chunk = threading.Event()
    arrival: list[float] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            proxy.url + CHAT,
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=10,
        ) as response:
            for _ in response.iter_raw():
                arrival.append(time.monotonic())
                first_chunk.set()

    client = threading.Thread(target=stream)
    client.start()
    assert first_chunk.wait(10)
    assert sample(scrape(proxy.url), "clip_proxy_requests_in_flight") == 1
    client.join(15)
    assert sample(scrape(proxy.url), "clip_proxy_requests_in_flight") == 0
    # The meter relays each chunk as it comes: the client saw the first one long before
    # the upstream sent its last (8 events, 0.3 s apart).
    assert upstream.chunk_sent_at[-1] - arrival[0] > 1.0


def _start_in_child(answers: multiprocessing.queues.Queue[str]) -> None:
    try:
        refuse_worker_processes()
        answers.put("started")
    except RuntimeError as exc:
        answers.put(str(exc))


def test_the_app_refuses_to_run_as_one_of_several_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One process per container: a uvicorn worker child or multiprocess metrics refuse."""
    refuse_worker_processes()  # the test process itself is a lone process: fine
    context = multiprocessing.get_context("fork")
    answers: multiprocessing.queues.Queue[str] = context.Queue()
    child = context.Process(target=_start_in_child, args=(answers,))
    child.start()
    child.join(10)
    assert "one worker per container" in answers.get(timeout=5)
    answers.close()
    answers.join_thread()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        refuse_worker_processes()


def test_client_leaving_mid_stream_is_a_cancelled_outcome(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy()
    closed_before = upstream.connections_closed
    upstream.script(Reply(chunk_delay_s=0.5))
    with httpx.stream(
        "POST",
        proxy.url + CHAT,
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=10,
    ) as response:
        next(response.iter_raw())  # the first chunk, then hang up
    deadline = time.monotonic() + scaled(10)
    text = scrape(proxy.url)
    while time.monotonic() < deadline:
        text = scrape(proxy.url)
        if sample(text, "clip_proxy_stream_duration_seconds_count", outcome="cancelled"):
            break
        time.sleep(0.1)
    assert sample(text, "clip_proxy_stream_duration_seconds_count", outcome="cancelled") == 1
    assert sample(text, "clip_proxy_requests_in_flight") == 0
    # The upstream's connection was released with the client's, long before its last chunk.
    while time.monotonic() < deadline and upstream.connections_closed == closed_before:
        time.sleep(0.1)
    assert upstream.connections_closed == closed_before + 1
    assert len(upstream.chunk_sent_at) < 8
