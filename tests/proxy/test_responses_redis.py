"""Stored responses in the real Redis, shared by two proxy replicas: a response created on one
is read, continued and deleted on the other; the record holds a digest of the key, never the
key; another key finds nothing; the TTL applies."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator

import openai
import pytest
import redis

from tests.helpers import ProxyServer
from tests.upstream_server import FakeUpstream

# db 13: this module's own on the shared Redis, apart from the other tests'.
REDIS_URL = "redis://127.0.0.1:6379/13"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis")


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"clip-proxy-test-{uuid.uuid4().hex}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def sdk(proxy: ProxyServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_two_replicas_share_stored_responses(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream, prefix: str
) -> None:
    settings = {
        "cache_url": REDIS_URL,
        "cache_key_prefix": prefix,
        "api_keys": "key-alice,key-bob",
        "responses_ttl_s": 60,
    }
    one, two = start_proxy(**settings), start_proxy(**settings)
    first = sdk(one, "key-alice").responses.create(model="deepseek-r1", input="Hello")

    # The record: the response and its conversation, owned by a digest, under the prefix.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stored = client.get(f"{prefix}responses:{first.id}")
        ttl = client.ttl(f"{prefix}responses:{first.id}")
    finally:
        client.close()
    assert stored is not None
    assert b"key-alice" not in stored
    assert 0 < ttl <= 60

    alice_two = sdk(two, "key-alice")
    assert alice_two.responses.retrieve(first.id).output_text == "A cat on a sofa."
    with alice_two.responses.stream(
        model="deepseek-r1", input="And then?", previous_response_id=first.id
    ) as stream:
        second = stream.get_final_response()
    sent = upstream.requests[-1].json["messages"]
    assert sent == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "A cat on a sofa."},
        {"role": "user", "content": "And then?"},
    ]
    assert sdk(one, "key-alice").responses.retrieve(second.id).id == second.id

    bob = sdk(two, "key-bob")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError):
        bob.responses.create(model="deepseek-r1", input="?", previous_response_id=first.id)

    sdk(two, "key-alice").responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk(one, "key-alice").responses.retrieve(first.id)


def test_redis_entries_expire(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream, prefix: str
) -> None:
    import time

    proxy = start_proxy(cache_url=REDIS_URL, cache_key_prefix=prefix, responses_ttl_s=1)
    client = sdk(proxy, "any")
    response = client.responses.create(model="deepseek-r1", input="Hello")
    assert client.responses.retrieve(response.id).id == response.id
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.responses.retrieve(response.id)
        except openai.NotFoundError:
            return
        time.sleep(0.2)
    pytest.fail("the stored response outlived its TTL")
