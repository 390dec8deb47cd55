"""Caches scoped by tenant, through a real proxy with two client keys: B's request for an
image A sent earlier looks exactly like a request for an image nobody sent (same
Server-Timing stages, no cache hit on /metrics), in the memory cache and in a real Redis;
with CACHE_SCOPE=shared it hits. No key ever reaches a cache key."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from app.engine.cache_scope import CacheScope
from app.observability.tenant import bound_client, key_identity
from tests.helpers import DRY_RUN, ProxyServer, data_url, fresh_png, image_message, metric_value

KEY_A = "sk-tenant-a-" + uuid.uuid4().hex
KEY_B = "sk-tenant-b-" + uuid.uuid4().hex
# A Redis database of these tests' own (other suites use 0), keys under a fresh prefix.
REDIS_DB = 11
CHAT = "/v1/chat/completions"


def stages(reply: httpx.Response) -> list[str]:
    """The stage names of Server-Timing, without their durations."""
    return [part.split(";")[0].strip() for part in reply.headers["server-timing"].split(",")]


def send(proxy: ProxyServer, key: str, image: bytes) -> httpx.Response:
    reply = httpx.post(
        proxy.url + CHAT,
        json={"messages": [image_message(data_url(image))]},
        headers={**DRY_RUN, "Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return reply


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"clip-proxy-scope-{uuid.uuid4().hex}:"
    yield name
    if shutil.which("redis-server") is None:
        return
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _backend_settings(backend: str, prefix: str) -> dict[str, object]:
    if backend == "memory":
        return {"cache_key_prefix": prefix}
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis")
    # Redis alone: the memory LRU off, so every lookup is Redis's.
    return {
        "cache_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "cache_memory_bytes": 0,
        "cache_key_prefix": prefix,
    }


def _stored(backend: str, prefix: str, count: int) -> list[bytes]:
    """Redis writes land after the answer: wait until `count` keys are there."""
    if backend == "memory":
        return []
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if len(keys) >= count:
                return keys
            time.sleep(0.02)
        raise AssertionError(f"{count} keys never reached Redis")
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_another_tenants_image_is_a_miss_that_looks_like_any_miss(
    start_proxy: Callable[..., ProxyServer], backend: str, prefix: str
) -> None:
    proxy = start_proxy(api_keys=f"{KEY_A},{KEY_B}", **_backend_settings(backend, prefix))
    seen_by_a, never_sent = fresh_png(9101), fresh_png(9102)

    first = send(proxy, KEY_A, seen_by_a)
    keys = _stored(backend, prefix, 1)
    hits = metric_value(proxy.url, "clip_proxy_cache_hits_total", backend=backend)
    a_again = send(proxy, KEY_A, seen_by_a)  # A's own entry serves A
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend=backend) == hits + 1
    hits += 1

    b_on_a_image = send(proxy, KEY_B, seen_by_a)
    b_on_new_image = send(proxy, KEY_B, never_sent)

    assert "decode" in stages(first) and "decode" not in stages(a_again)
    # B learns nothing: the same stages as for an image nobody sent, and no hit counted.
    assert stages(b_on_a_image) == stages(b_on_new_image) == stages(first)
    assert {"decode", "preprocess", "encode"} <= set(stages(b_on_a_image))
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend=backend) == hits
    # Both tenants got the same vector all the same (the model's, not a cache's).
    assert b_on_a_image.json()["messages"] == first.json()["messages"]
    # No client key in any cache key: a digest of it, per tenant.
    for key in _stored(backend, prefix, 3) + keys:
        assert KEY_A.encode() not in key and KEY_B.encode() not in key
        assert f"t.{key_identity(KEY_A)}:".encode() in key or (
            f"t.{key_identity(KEY_B)}:".encode() in key
        )


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_shared_scope_lets_tenants_reuse_each_others_entries(
    start_proxy: Callable[..., ProxyServer], backend: str, prefix: str
) -> None:
    proxy = start_proxy(
        api_keys=f"{KEY_A},{KEY_B}", cache_scope="shared", **_backend_settings(backend, prefix)
    )
    image = fresh_png(9103)

    send(proxy, KEY_A, image)
    _stored(backend, prefix, 1)
    hits = metric_value(proxy.url, "clip_proxy_cache_hits_total", backend=backend)
    reply = send(proxy, KEY_B, image)

    assert "decode" not in stages(reply) and "encode" not in stages(reply)
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend=backend) == hits + 1


def test_the_scope_resolves_from_the_setting_and_the_keys() -> None:
    assert CacheScope.from_setting("auto", keys_set=True).mode == "key"
    assert CacheScope.from_setting("auto", keys_set=False).mode == "shared"
    assert CacheScope.from_setting("key", keys_set=False).mode == "shared"  # no tenant
    assert CacheScope.from_setting("shared", keys_set=True).mode == "shared"
    scope = CacheScope.from_setting("auto", keys_set=True)
    with bound_client(tenant=key_identity(KEY_A), address="127.0.0.1"):
        part = scope.part()
    assert part == f"t.{key_identity(KEY_A)}:" and KEY_A not in part
    assert len(key_identity(KEY_A)) == 32 and key_identity(KEY_A) != key_identity(KEY_B)
    assert scope.part() == ""  # outside a request
