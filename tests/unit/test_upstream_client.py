"""The upstream client (app/upstream/) against the real test upstream: keep-alive reuse,
streamed bodies, interim answers, every framing cut, and our errors for every way the
upstream fails. These replace the tests of the hand-written transport, behaviour for
behaviour, and add the ones it failed."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import pytest

from app.errors import (
    UpstreamBadResponse,
    UpstreamResponseTooLarge,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from app.metrics import Metrics
from app.upstream.client import RetryPolicy, UpstreamClient
from app.upstream.stream_meter import StreamMeter, StreamOutcome
from tests.helpers import free_port
from tests.upstream_server import FakeUpstream, Reply, Wire, r1_events

pytestmark = pytest.mark.asyncio

STREAM_BODY = json.dumps({"model": "deepseek-r1", "messages": [], "stream": True}).encode()
JSON_BODY = json.dumps({"model": "deepseek-r1", "messages": []}).encode()
KEY = "sk-unit-upstream-key"
SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


def client(base_url: str, read_s: float = 5.0, **options: object) -> UpstreamClient:
    return UpstreamClient(
        base_url,
        KEY,
        connect_timeout_s=2.0,
        read_timeout_s=read_s,
        max_connections=8,
        retry=RetryPolicy(max_retries=2, base_s=0.01),
        **options,  # type: ignore[arg-type]
    )


async def relay_all(http: UpstreamClient, meter: StreamMeter | None = None) -> bytes:
    response = await http.open("POST", "/chat/completions", body=STREAM_BODY, stream=True)
    try:
        return b"".join([chunk async for chunk in response.relay(meter)])
    finally:
        await response.aclose()


def events_of(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]


def error_code(body: bytes) -> str | None:
    last = events_of(body)[-1]
    return json.loads(last)["error"]["code"] if last.startswith('{"error"') else None


async def test_stream_arrives_whole_and_connection_is_reused(upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    http = client(upstream.base_url)
    try:
        for _ in range(3):
            body = await relay_all(http)
            assert body.decode() == "".join(f"data: {event}\n\n" for event in r1_events())
    finally:
        await http.aclose()
    assert upstream.connections_opened - opened == 1
    assert json.loads(upstream.requests[-1].body)["stream"] is True
    assert upstream.requests[-1].headers["content-length"] == str(len(STREAM_BODY))
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_json_error_status_and_body_pass_through(upstream: FakeUpstream) -> None:
    upstream.script(Reply(status=400, body={"error": {"message": "bad model"}}))
    http = client(upstream.base_url)
    try:
        with pytest.raises(UpstreamStatus) as caught:
            await http.open("POST", "/chat/completions", body=JSON_BODY)
    finally:
        await http.aclose()
    assert caught.value.status_code == 400
    assert caught.value.to_body() == {"error": {"message": "bad model"}}


async def test_the_key_is_scrubbed_from_an_error_body_and_headers(upstream: FakeUpstream) -> None:
    quoted = {"error": {"message": f"Incorrect API key: Bearer {KEY} (or {KEY})"}}
    upstream.script(Reply(status=401, body=quoted, headers={"content-type": f"x/{KEY}"}))
    http = client(upstream.base_url)
    try:
        with pytest.raises(UpstreamStatus) as caught:
            await http.open("POST", "/chat/completions", body=JSON_BODY)
    finally:
        await http.aclose()
    shown = json.dumps(caught.value.to_body()) + str(caught.value.content_type)
    assert KEY not in shown
    assert "Incorrect API key: Bearer [redacted] (or [redacted])" in shown


async def test_reset_mid_stream_ends_with_one_truncation_event(upstream: FakeUpstream) -> None:
    upstream.script(Reply(reset_after_chunks=2, chunk_delay_s=0.01))
    http = client(upstream.base_url)
    try:
        body = await relay_all(http)
    finally:
        await http.aclose()
    events = events_of(body)
    assert len(events) == 3  # two relayed, then the one error event
    assert error_code(body) == "upstream_stream_truncated"


# Every way a stream can be cut before `data: [DONE]`, in every framing.
EVENT = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
CHUNKED = SSE + b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n"
LENGTH = SSE + b"content-length: %d\r\n\r\n" % (len(EVENT) * 3) + EVENT
CLOSE_DELIMITED = SSE + b"\r\n" + EVENT


@pytest.mark.parametrize("end", ["rst", "fin"])
@pytest.mark.parametrize(
    "head", [CHUNKED, LENGTH, CLOSE_DELIMITED], ids=["chunked", "content-length", "close"]
)
async def test_a_cut_stream_in_any_framing_is_truncated(
    upstream: FakeUpstream, head: bytes, end: str
) -> None:
    upstream.script(Reply(wire=Wire((head, 0.05), end=end)))
    metrics = Metrics()
    meter = StreamMeter(metrics, sent_at=time.perf_counter(), headers_at=time.perf_counter())
    http = client(upstream.base_url)
    try:
        body = await relay_all(http, meter)
    finally:
        await http.aclose()
    assert body.startswith(EVENT)
    assert error_code(body) == "upstream_stream_truncated"
    assert len(events_of(body)) == 2
    truncated = metrics.stream_duration.labels(
        outcome=StreamOutcome.truncated.value, dialect="chat"
    )
    assert truncated._sum.get() > 0  # observed once, as truncated


async def test_a_close_delimited_stream_with_done_is_complete(upstream: FakeUpstream) -> None:
    upstream.script(Reply(wire=Wire((CLOSE_DELIMITED + b"data: [DONE]\n\n",), end="fin")))
    http = client(upstream.base_url)
    try:
        body = await relay_all(http)
    finally:
        await http.aclose()
    assert events_of(body) == [EVENT.decode()[6:].strip(), "[DONE]"]


async def test_interim_103_is_skipped_and_never_answers_another_request(
    upstream: FakeUpstream,
) -> None:
    """User A's request draws 103 Early Hints, its 200 comes late; user B's request, sent
    meanwhile, must get B's answer (with the old transport it got A's)."""
    answer_a = b'{"answer": "to user A, private"}'
    early_hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    final += b"content-length: %d\r\n\r\n" % len(answer_a) + answer_a
    upstream.script(
        Reply(wire=Wire((early_hints, 0.6, final))),
        Reply(body={"answer": "to user B"}),
    )
    http = client(upstream.base_url)

    async def ask(delay_s: float) -> bytes:
        await asyncio.sleep(delay_s)
        response = await http.open("POST", "/chat/completions", body=JSON_BODY)
        return await response.read()

    try:
        first, second = await asyncio.gather(ask(0), ask(0.3))
        third = await ask(0)  # over a reused connection: nothing left over on it
    finally:
        await http.aclose()
    assert json.loads(first) == {"answer": "to user A, private"}
    assert json.loads(second) == {"answer": "to user B"}
    assert json.loads(third)["object"] == "chat.completion"


async def test_html_to_a_stream_request_is_a_bad_response(upstream: FakeUpstream) -> None:
    page = b"<html>maintenance</html>"
    upstream.script(
        Reply(raw_body=page, headers={"content-type": "text/html"}),
        Reply(raw_body=b'{"id": "x"}', headers={"content-type": "application/json"}),
    )
    http = client(upstream.base_url)
    try:
        for _ in range(2):
            with pytest.raises(UpstreamBadResponse, match="not text/event-stream"):
                await http.open("POST", "/chat/completions", body=STREAM_BODY, stream=True)
    finally:
        await http.aclose()
    assert len(upstream.requests) == 2  # not retried


async def test_gzip_bomb_is_capped(upstream: FakeUpstream) -> None:
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100_000
    upstream.script(Reply(raw_body=bomb, headers={"content-encoding": "gzip"}))
    http = client(upstream.base_url, max_body_bytes=1024 * 1024)
    try:
        response = await http.open("POST", "/chat/completions", body=JSON_BODY)
        with pytest.raises(UpstreamResponseTooLarge):
            await response.read()
    finally:
        await http.aclose()


async def test_gzip_is_decoded(upstream: FakeUpstream) -> None:
    upstream.script(
        Reply(raw_body=gzip.compress(b'{"ok": 1}'), headers={"content-encoding": "gzip"})
    )
    http = client(upstream.base_url)
    try:
        response = await http.open("POST", "/chat/completions", body=JSON_BODY)
        assert json.loads(await response.read()) == {"ok": 1}
    finally:
        await http.aclose()


async def test_silence_longer_than_read_timeout_is_a_timeout(upstream: FakeUpstream) -> None:
    upstream.script(Reply(stall_before_headers_s=1.0))
    http = client(upstream.base_url, read_s=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            await http.open("POST", "/chat/completions", body=STREAM_BODY, stream=True)
    finally:
        await http.aclose()
    assert len(upstream.requests) == 1  # a stall is not retried


async def test_silence_mid_body_longer_than_read_timeout_ends_the_stream(
    upstream: FakeUpstream,
) -> None:
    upstream.script(Reply(first_chunk_delay_s=1.0))  # headers, then a long think
    http = client(upstream.base_url, read_s=0.2)
    started = time.monotonic()
    try:
        body = await relay_all(http)
    finally:
        await http.aclose()
    assert time.monotonic() - started < 0.8  # the 0.2 s timeout decided, not the think
    assert error_code(body) == "upstream_timeout"


async def test_steady_stream_longer_than_read_timeout_is_not_cut(upstream: FakeUpstream) -> None:
    # Every gap is shorter than the read timeout, the whole stream much longer: the
    # timeout measures silence, so the stream arrives whole.
    events = [*(json.dumps({"n": n}) for n in range(12)), "[DONE]"]
    upstream.script(Reply(events=events, chunk_delay_s=0.05))
    http = client(upstream.base_url, read_s=0.2)
    try:
        body = await relay_all(http)
    finally:
        await http.aclose()
    assert body.decode() == "".join(f"data: {event}\n\n" for event in events)


async def test_nothing_listening_is_unreachable() -> None:
    http = client(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamUnreachable):
            await http.open("POST", "/chat/completions", body=JSON_BODY)
    finally:
        await http.aclose()


async def test_connection_close_from_upstream_is_honoured(upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    upstream.script(Reply(body={"ok": 1}, headers={"connection": "close"}), Reply(body={"ok": 2}))
    http = client(upstream.base_url)
    try:
        for expected in (1, 2):
            response = await http.open("POST", "/chat/completions", body=JSON_BODY)
            assert json.loads(await response.read()) == {"ok": expected}
    finally:
        await http.aclose()
    assert upstream.connections_opened - opened == 2


async def test_a_response_not_read_to_its_end_never_goes_back_to_the_pool(
    upstream: FakeUpstream,
) -> None:
    events = [json.dumps({"n": n}) for n in range(20)]
    upstream.script(Reply(events=events, chunk_delay_s=0.02), Reply(body={"second": True}))
    http = client(upstream.base_url)
    try:
        response = await http.open("POST", "/chat/completions", body=STREAM_BODY, stream=True)
        async for _ in response.relay():
            break  # the client leaves after one chunk
        await response.aclose()
        await response.aclose()  # idempotent
        second = await http.open("POST", "/chat/completions", body=JSON_BODY)
        assert json.loads(await second.read()) == {"second": True}
    finally:
        await http.aclose()
    assert upstream.requests[0].connection != upstream.requests[1].connection


@pytest.mark.parametrize("drop", ["fin", "rst"])
async def test_a_stale_pooled_connection_is_retried_at_once(
    upstream: FakeUpstream, drop: str
) -> None:
    retries: list[str] = []
    http = UpstreamClient(
        upstream.base_url,
        KEY,
        retry=RetryPolicy(max_retries=2, base_s=2.0),  # a backoff would show in the time
        on_retry=retries.append,
    )
    try:
        first = await http.open("POST", "/chat/completions", body=JSON_BODY)
        await first.read()  # the connection goes back to the pool
        upstream.script(Reply(drop=drop))  # the next request on it: read, then dropped
        started = time.perf_counter()
        second = await http.open("POST", "/chat/completions", body=JSON_BODY)
        assert json.loads(await second.read())["object"] == "chat.completion"
        elapsed = time.perf_counter() - started
    finally:
        await http.aclose()
    assert retries == ["stale_connection"]
    assert elapsed < 0.5
    assert upstream.requests[2].connection != upstream.requests[1].connection


async def test_an_answer_cut_inside_its_head_is_never_sent_again(upstream: FakeUpstream) -> None:
    """The upstream had begun answering: the request reached it, so no retry."""
    upstream.script(Reply(wire=Wire((b"HTTP/1.1 200 OK\r\ncontent-type: text/ev",), end="fin")))
    retries: list[str] = []
    http = client(upstream.base_url, on_retry=retries.append)
    try:
        with pytest.raises(UpstreamUnreachable):
            await http.open("POST", "/chat/completions", body=STREAM_BODY, stream=True)
    finally:
        await http.aclose()
    assert retries == []
    assert len(upstream.requests) == 1
