"""The Redis cache for real: replicas share vectors through it, a Redis that dies or was
never there costs requests nothing but a counter, and what it holds is never trusted."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import redis

from tests.helpers import (
    DATA,
    DRY_RUN,
    ProxyServer,
    data_url,
    free_port,
    fresh_png,
    image_message,
    images_encoded,
    metric_value,
)
from tests.processes import scaled

SHARED_REDIS = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own, so parallel runs on one Redis never meet; its keys
    are deleted afterwards."""
    name = f"clip-proxy-test-{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own on a free loopback port (the shared one at 6379
    must not be stopped)."""
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + scaled(10)
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    yield url, process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def chat(proxy: ProxyServer, url: str) -> httpx.Response:
    body = {"messages": [image_message(url)]}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=DRY_RUN, timeout=30)


def wait_for_keys(url: str, prefix: str, count: int) -> list[bytes]:
    """The cache writes to Redis after answering; wait (bounded) for the writes to land."""
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + scaled(5)
        while True:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if len(keys) >= count or time.monotonic() > deadline:
                return keys
            time.sleep(0.02)
    finally:
        client.close()


def test_two_replicas_share_vectors_through_redis(
    start_proxy: Callable[..., ProxyServer], prefix: str
) -> None:
    first = start_proxy(cache_url=SHARED_REDIS, cache_key_prefix=prefix)
    second = start_proxy(cache_url=SHARED_REDIS, cache_key_prefix=prefix)
    photo = data_url(DATA / "astronaut.png")

    one = chat(first, photo)
    assert one.status_code == 200
    assert images_encoded(first.url) == 1
    keys = wait_for_keys(SHARED_REDIS, prefix, 1)
    digest = hashlib.sha256((DATA / "astronaut.png").read_bytes()).hexdigest()
    assert [key.decode().rsplit(":", 1)[1] for key in keys] == [digest]

    two = chat(second, photo)
    assert two.status_code == 200
    assert two.json()["messages"] == one.json()["messages"]
    assert images_encoded(second.url) == 0  # the second replica never ran the encoder
    assert metric_value(second.url, "clip_proxy_cache_hits_total", backend="redis") == 1
    assert metric_value(second.url, "clip_proxy_cache_misses_total", backend="memory") == 1


def test_entries_expire_after_the_configured_ttl(
    start_proxy: Callable[..., ProxyServer], prefix: str
) -> None:
    proxy = start_proxy(cache_url=SHARED_REDIS, cache_key_prefix=prefix, cache_ttl_s=600)
    assert chat(proxy, data_url(DATA / "coffee.png")).status_code == 200
    (key,) = wait_for_keys(SHARED_REDIS, prefix, 1)
    client = redis.Redis.from_url(SHARED_REDIS)
    ttl = client.ttl(key)
    client.close()
    assert 590 <= ttl <= 600


def test_redis_stopped_mid_test_requests_still_succeed(
    start_proxy: Callable[..., ProxyServer],
    own_redis: tuple[str, subprocess.Popen[bytes]],
    prefix: str,
) -> None:
    url, server = own_redis
    # No memory tier: every lookup goes to Redis, so its loss is what the requests meet.
    proxy = start_proxy(cache_url=url, cache_key_prefix=prefix, cache_memory_bytes=0)
    photo = data_url(DATA / "chelsea.png")
    assert chat(proxy, photo).status_code == 200
    wait_for_keys(url, prefix, 1)
    assert chat(proxy, photo).status_code == 200
    assert images_encoded(proxy.url) == 1
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend="redis") == 1

    server.kill()
    server.wait(timeout=10)
    replies = [chat(proxy, photo), chat(proxy, data_url(fresh_png(2)))]
    assert [reply.status_code for reply in replies] == [200, 200]
    assert images_encoded(proxy.url) == 3  # computed again: the cache degraded, not the request
    assert metric_value(proxy.url, "clip_proxy_cache_errors_total", backend="redis") >= 2


def test_unreachable_redis_url_degrades_to_computing(
    start_proxy: Callable[..., ProxyServer], prefix: str
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proxy = start_proxy(cache_url=dead, cache_key_prefix=prefix)
    photo = data_url(DATA / "rocket.jpg")
    replies = [chat(proxy, photo) for _ in range(3)]
    assert [reply.status_code for reply in replies] == [200] * 3
    assert images_encoded(proxy.url) == 1  # the memory tier still works
    assert metric_value(proxy.url, "clip_proxy_cache_errors_total", backend="redis") >= 1
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend="memory") == 2


def _corrupt_values(width: int, height: int) -> dict[str, bytes]:
    """What a damaged or foreign Redis might hold under an image's key."""
    header = struct.pack("<II", width, height)
    wide = np.ones(3072, dtype="<f4") / np.sqrt(3072)  # a unit vector, of another model's size
    return {
        "one float": header + struct.pack("<f", 1.0),
        "NaNs": header + np.full(768, np.nan, dtype="<f4").tobytes(),
        "1e30s": header + np.full(768, 1e30, dtype="<f4").tobytes(),
        "3072 floats": header + wide.tobytes(),
        "no header": b"\x00\x01",
    }


def test_corrupt_redis_entries_are_recomputed_and_overwritten(
    start_proxy: Callable[..., ProxyServer], prefix: str
) -> None:
    # No memory tier: every lookup reads Redis, so each corrupt value is what it meets.
    proxy = start_proxy(cache_url=SHARED_REDIS, cache_key_prefix=prefix, cache_memory_bytes=0)
    photo = data_url(DATA / "camera.png")
    good = chat(proxy, photo)
    assert good.status_code == 200
    (key,) = wait_for_keys(SHARED_REDIS, prefix, 1)
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        stored = client.get(key)
        assert isinstance(stored, bytes)
        width, height = struct.unpack_from("<II", stored)
        for number, (kind, value) in enumerate(_corrupt_values(width, height).items(), start=1):
            client.set(key, value)

            reply = chat(proxy, photo)

            assert reply.status_code == 200, kind
            assert reply.json()["messages"] == good.json()["messages"], kind
            assert images_encoded(proxy.url) == 1 + number, kind  # recomputed, not trusted
            errors = metric_value(proxy.url, "clip_proxy_cache_errors_total", backend="redis")
            assert errors == number, kind
            deadline = time.monotonic() + scaled(5)  # the overwrite lands after the answer
            while client.get(key) != stored and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.get(key) == stored, kind
    finally:
        client.close()
