"""Stored responses in the real Redis, shared by two proxy replicas: a response created on one
is read, continued and deleted on the other; the record holds a digest of the key, never the
key; another key finds nothing; the TTL applies."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import redis

from tests.helpers import DATA, ProxyServer, data_url
from tests.processes import scaled
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


PICTURE: Any = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": data_url(DATA / "chelsea.png")},
        ],
    }
]


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
    first = sdk(one, "key-alice").responses.create(model="deepseek-r1", input=PICTURE)

    # The record: the response and its conversation, owned by a digest, under the prefix;
    # the picture is a blob beside it, referenced from the record.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stored = client.get(f"{prefix}responses:{first.id}")
        ttl = client.ttl(f"{prefix}responses:{first.id}")
        blobs = list(client.scan_iter(match=f"{prefix}responses:blob:*"))
        blob = client.get(blobs[0]) if blobs else None
    finally:
        client.close()
    assert stored is not None
    assert b"key-alice" not in stored
    assert b"base64" not in stored and b"clip-proxy-stored:" in stored
    assert 0 < ttl <= 60
    assert len(blobs) == 1 and blob == PICTURE[0]["content"][1]["image_url"].encode()

    alice_two = sdk(two, "key-alice")
    assert alice_two.responses.retrieve(first.id).output_text == "A cat on a sofa."
    with alice_two.responses.stream(
        model="deepseek-r1", input="And then?", previous_response_id=first.id
    ) as stream:
        second = stream.get_final_response()
    sent = upstream.requests[-1].json["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "user"]
    # The picture of the first turn, read back from the blob, is the seed's retained vector.
    assert sent[0]["content"].startswith("What is this?\n<retain_image_emb>")
    assert sent[1:] == [
        {"role": "assistant", "content": "A cat on a sofa."},
        {"role": "user", "content": "And then?"},
    ]
    client = redis.Redis.from_url(REDIS_URL)
    try:  # the second turn's record repeats the picture's reference, not the picture
        assert len(list(client.scan_iter(match=f"{prefix}responses:blob:*"))) == 1
    finally:
        client.close()
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
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        try:
            client.responses.retrieve(response.id)
        except openai.NotFoundError:
            return
        time.sleep(0.2)
    pytest.fail("the stored response outlived its TTL")
