"""The upstream transport (app/upstream_transport.py) against the real test upstream:
keep-alive reuse, streamed bodies, and httpx's exceptions for every way the upstream fails."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from app.upstream_transport import UpstreamTransport
from tests.helpers import free_port
from tests.upstream_server import FakeUpstream, Reply, r1_events

pytestmark = pytest.mark.asyncio

STREAM_BODY = json.dumps({"model": "deepseek-r1", "messages": [], "stream": True}).encode()


def client(base_url: str, read_s: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        transport=UpstreamTransport(max_connections=8),
        timeout=httpx.Timeout(read_s, connect=2.0),
    )


async def test_stream_arrives_whole_and_connection_is_reused(upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    async with client(upstream.base_url) as http:
        for _ in range(3):
            async with http.stream("POST", "/chat/completions", content=STREAM_BODY) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                body = b"".join([chunk async for chunk in reply.aiter_bytes()])
            expected = "".join(f"data: {event}\n\n" for event in r1_events())
            assert body.decode() == expected
    assert upstream.connections_opened - opened == 1
    assert json.loads(upstream.requests[-1].body)["stream"] is True
    assert upstream.requests[-1].headers["content-length"] == str(len(STREAM_BODY))


async def test_json_error_status_and_body_pass_through(upstream: FakeUpstream) -> None:
    upstream.script(Reply(status=429, body={"error": {"message": "slow down"}}))
    async with client(upstream.base_url) as http:
        reply = await http.post("/chat/completions", content=b"{}")
    assert reply.status_code == 429
    assert reply.json() == {"error": {"message": "slow down"}}


async def test_reset_mid_stream_is_a_remote_protocol_error(upstream: FakeUpstream) -> None:
    upstream.script(Reply(reset_after_chunks=2, chunk_delay_s=0.01))
    received = b""
    async with (
        client(upstream.base_url) as http,
        http.stream("POST", "/chat/completions", content=STREAM_BODY) as reply,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in reply.aiter_bytes():
                received += chunk
    assert received.count(b"data: ") == 2


async def test_silence_longer_than_read_timeout_is_a_read_timeout(upstream: FakeUpstream) -> None:
    upstream.script(Reply(stall_before_headers_s=1.0))
    async with client(upstream.base_url, read_s=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", content=STREAM_BODY)


async def test_silence_mid_body_longer_than_read_timeout_is_a_read_timeout(
    upstream: FakeUpstream,
) -> None:
    upstream.script(Reply(first_chunk_delay_s=1.0))  # headers, then a long think
    async with (
        client(upstream.base_url, read_s=0.2) as http,
        http.stream("POST", "/chat/completions", content=STREAM_BODY) as reply,
    ):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            async for _ in reply.aiter_bytes():
                pass
        assert time.monotonic() - started < 0.8  # the 0.2 s timeout decided, not the think


async def test_steady_stream_longer_than_read_timeout_is_not_cut(upstream: FakeUpstream) -> None:
    # Every gap is shorter than the read timeout, the whole stream much longer: the
    # timeout measures silence, so the stream arrives whole.
    events = [json.dumps({"n": n}) for n in range(12)]
    upstream.script(Reply(events=events, chunk_delay_s=0.05))
    async with (
        client(upstream.base_url, read_s=0.2) as http,
        http.stream("POST", "/chat/completions", content=STREAM_BODY) as reply,
    ):
        body = b"".join([chunk async for chunk in reply.aiter_bytes()])
    assert body.decode() == "".join(f"data: {event}\n\n" for event in events)


async def test_nothing_listening_is_a_connect_error() -> None:
    async with client(f"http://127.0.0.1:{free_port()}/v1") as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("/chat/completions", content=b"{}")


async def test_connection_close_from_upstream_is_honoured(upstream: FakeUpstream) -> None:
    opened = upstream.connections_opened
    upstream.script(Reply(body={"ok": 1}, headers={"connection": "close"}), Reply(body={"ok": 2}))
    async with client(upstream.base_url) as http:
        assert (await http.post("/chat/completions", content=b"{}")).json() == {"ok": 1}
        assert (await http.post("/chat/completions", content=b"{}")).json() == {"ok": 2}
    assert upstream.connections_opened - opened == 2
