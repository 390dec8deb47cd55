"""A client that goes away: the upstream request is cancelled and its connection closed
within 1 s, at every phase (waiting for upstream headers, model thinking, mid-stream), and
images still queued for the encoder are dropped.

The client is a raw socket, so the test controls exactly when it closes; the test upstream
notices a close even while it is pausing, and records when.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import ProxyServer, data_url, images_encoded, proxy_settings
from tests.upstream_server import FakeUpstream, Reply

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def quiet_proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    """Pings off, so a silent stream stays silent and only the disconnect can end it."""
    server = ProxyServer(proxy_settings(test_model_dir, upstream.base_url, ping_interval_s=0))
    server.start()
    yield server
    server.stop()


def send_raw(proxy: ProxyServer, body: dict[str, object]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, limit_s: float = 10) -> bytes:
    received = b""
    deadline = time.monotonic() + limit_s
    while marker not in received:
        assert time.monotonic() < deadline, f"no {marker!r} in {received!r}"
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}: {received!r}"
        received += chunk
    return received


def wait_for(condition: Callable[[], bool], limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def close_and_time_upstream_close(sock: socket.socket, upstream: FakeUpstream) -> float:
    """Close the client socket; seconds until the upstream saw its connection closed."""
    connection = upstream.requests[-1].connection
    closed_at = time.monotonic()
    sock.close()
    wait_for(lambda: connection in upstream.closed_connections, limit_s=5)
    return upstream.closed_connections[connection] - closed_at


@pytest.mark.parametrize("stream", [True, False])
def test_close_while_upstream_has_not_answered(
    quiet_proxy: ProxyServer, upstream: FakeUpstream, stream: bool
) -> None:
    upstream.script(Reply(stall_before_headers_s=30))
    sock = send_raw(quiet_proxy, {"messages": HELLO, "stream": stream})
    wait_for(lambda: len(upstream.requests) == 1)
    time.sleep(0.2)  # the proxy is now inside its upstream call, awaiting headers
    assert close_and_time_upstream_close(sock, upstream) < 1.0


def test_close_while_the_model_thinks_before_the_first_token(
    quiet_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(first_chunk_delay_s=30))
    sock = send_raw(quiet_proxy, {"messages": HELLO, "stream": True})
    read_until(sock, b"\r\n\r\n")  # the stream has begun; no token yet
    assert close_and_time_upstream_close(sock, upstream) < 1.0


def test_close_mid_stream(quiet_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.script(Reply(chunk_delay_s=0.5, events=[json.dumps({"n": i}) for i in range(60)]))
    sock = send_raw(quiet_proxy, {"messages": HELLO, "stream": True})
    read_until(sock, b'data: {"n": 1}')
    assert close_and_time_upstream_close(sock, upstream) < 1.0
    assert len(upstream.chunk_sent_at) < 10  # the upstream stopped, it did not send all 60


def test_after_disconnects_the_proxy_still_serves(
    quiet_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    for reply in (Reply(stall_before_headers_s=30), Reply(first_chunk_delay_s=30)):
        upstream.script(reply)
        sock = send_raw(quiet_proxy, {"messages": HELLO, "stream": True})
        wait_for(lambda: len(upstream.requests) >= 1)
        time.sleep(0.1)
        close_and_time_upstream_close(sock, upstream)
        upstream.reset()
    response = httpx.post(quiet_proxy.url + "/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 200


@pytest.fixture(scope="module")
def slow_model_dir(test_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test checkpoint with a bigger vision tower: slow enough on a CPU (a few images a
    second) that images are still queued when the client leaves."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    directory = tmp_path_factory.mktemp("slow") / "model"
    shutil.copytree(test_model_dir, directory)
    config = CLIPConfig.from_pretrained(test_model_dir)
    vision = config.vision_config
    assert isinstance(vision, CLIPVisionConfig)
    vision.hidden_size, vision.intermediate_size = 512, 2048
    vision.num_hidden_layers, vision.num_attention_heads = 8, 8
    CLIPModel(config).save_pretrained(directory)
    return directory


def test_close_drops_queued_images(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream, slow_model_dir: Path
) -> None:
    count = 16
    proxy = start_proxy(clip_model=str(slow_model_dir), max_batch=1, max_wait_ms=0)
    parts: list[dict[str, object]] = [{"type": "text", "text": "what are these?"}]
    for seed in range(count):
        buffer = io.BytesIO()
        Image.effect_noise((64, 64), 40 + seed).convert("RGB").save(buffer, format="PNG")
        parts.append({"type": "image_url", "image_url": {"url": data_url(buffer.getvalue())}})
    before = images_encoded(proxy.url)
    sock = send_raw(proxy, {"messages": [{"role": "user", "content": parts}]})
    wait_for(lambda: images_encoded(proxy.url) > before)  # encoding has begun
    sock.close()
    at_close = images_encoded(proxy.url) - before
    time.sleep(2)  # time for several more had they stayed queued
    encoded = images_encoded(proxy.url) - before
    assert encoded <= at_close + 1  # at most the batch already running finished
    assert encoded < count
    assert upstream.requests == []  # and nothing went upstream for a client that left
