"""The feature cache and conversation memory, seen from outside: one encode per distinct
image, however many requests, turns or concurrent copies carry it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai

from app.engine.cache import EmbeddingCache, ImageEmbedding, namespace_of
from app.engine.cache_backends import MemoryBackend
from app.metrics import Metrics
from tests.helpers import (
    DATA,
    DRY_RUN,
    ProxyServer,
    cosine,
    data_url,
    fresh_png,
    image_message,
    images_encoded,
    metric_value,
    parse_vector,
)
from tests.upstream_server import FakeUpstream


def test_memory_backend_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    async def scenario() -> tuple[int, list[bool]]:
        backend = MemoryBackend(max_bytes=3 * 100)
        for name in "abc":
            await backend.set(name, bytes(100))
        await backend.get("a")  # a is now the most recent; b the least
        await backend.set("d", bytes(100))
        present = [await backend.get(name) is not None for name in "abcd"]
        return backend.bytes_held, present

    held, present = asyncio.run(scenario())
    assert held == 300
    assert present == [True, False, True, True]


def test_namespace_changes_with_model_weights_preprocessing_and_dtype() -> None:
    base = namespace_of("clip@sha256:aa", 1, "torch.float32")
    assert namespace_of("clip@sha256:aa", 1, "torch.float32") == base
    assert namespace_of("clip@sha256:bb", 1, "torch.float32") != base
    assert namespace_of("clip@sha256:aa", 2, "torch.float32") != base
    assert namespace_of("clip@sha256:aa", 1, "torch.float16") != base


def test_a_stored_value_round_trips_to_the_same_vector_and_size() -> None:
    vector = np.random.default_rng(0).standard_normal(768).astype(np.float32)
    stored = ImageEmbedding("ab" * 32, vector, 640, 480).to_bytes()
    back = ImageEmbedding.from_bytes("ab" * 32, stored)
    assert len(stored) == 8 + 768 * 4
    assert (back.width, back.height) == (640, 480)
    np.testing.assert_array_equal(back.vector, vector)


def test_single_flight_computes_once_for_concurrent_callers_and_once_after() -> None:
    calls = 0

    async def compute() -> ImageEmbedding:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return ImageEmbedding("cd" * 32, np.full(4, 0.5, dtype=np.float32), 1, 1)

    async def scenario() -> list[ImageEmbedding]:
        cache = EmbeddingCache([MemoryBackend(1 << 20)], Metrics(), prefix="t:")
        cache.bind("ns")
        first = await asyncio.gather(*(cache.get_or_compute("cd" * 32, compute) for _ in range(10)))
        later = await cache.get_or_compute("cd" * 32, compute)
        return [*first, later]

    results = asyncio.run(scenario())
    assert calls == 1
    assert all(np.array_equal(result.vector, np.full(4, 0.5)) for result in results)


def test_a_caller_arriving_as_an_abandoned_flight_is_cancelled_gets_a_fresh_one() -> None:
    """A client that disconnects and retries at once must not inherit the cancellation."""
    started = asyncio.Event()
    calls = 0

    async def compute() -> ImageEmbedding:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0 if calls > 1 else 30)
        return ImageEmbedding("ef" * 32, np.full(4, 0.5, dtype=np.float32), 1, 1)

    async def scenario() -> ImageEmbedding:
        cache = EmbeddingCache([MemoryBackend(1 << 20)], Metrics(), prefix="t:")
        cache.bind("ns")
        gone = asyncio.create_task(cache.get_or_compute("ef" * 32, compute))
        await started.wait()
        gone.cancel()  # its only caller leaves: the flight is cancelled, not yet unwound
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        return await cache.get_or_compute("ef" * 32, compute)

    result = asyncio.run(scenario())
    assert calls == 2
    assert np.array_equal(result.vector, np.full(4, 0.5))


def test_ten_concurrent_requests_with_one_new_image_encode_it_once(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy()
    url = data_url(fresh_png(1))
    body = {"messages": [image_message(url)]}

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=body, headers=DRY_RUN)
                    for _ in range(10)
                )
            )

    replies = asyncio.run(send_all())
    assert [reply.status_code for reply in replies] == [200] * 10
    contents = {reply.json()["messages"][0]["content"] for reply in replies}
    assert len(contents) == 1  # every request got the same vector
    assert images_encoded(proxy.url) == 1
    joins = metric_value(proxy.url, "clip_proxy_cache_single_flight_joins_total")
    hits = metric_value(proxy.url, "clip_proxy_cache_hits_total", backend="memory")
    assert joins + hits == 9
    assert metric_value(proxy.url, "clip_proxy_cache_misses_total", backend="memory") == 1
    assert metric_value(proxy.url, "clip_proxy_cache_bytes", backend="memory") == 8 + 768 * 4


def test_ten_turn_conversation_encodes_its_photo_once_and_retains_it(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    photo = data_url(DATA / "chelsea.png")
    history: list[Any] = [image_message(photo, "What animal is this?")]
    for turn in range(10):
        reply = client.chat.completions.create(model="deepseek-r1", messages=history)
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
        history.append({"role": "user", "content": f"Tell me more ({turn})."})
    assert images_encoded(proxy.url) == 1
    assert metric_value(proxy.url, "clip_proxy_cache_hits_total", backend="memory") == 9

    sent = [request.json["messages"] for request in upstream.requests]
    assert len(sent) == 10
    first_turn = sent[0][0]["content"]
    text, tag = first_turn.split("\n")
    assert text == "What animal is this?"
    assert tag.startswith("<image>") and tag.endswith("</image>")
    vector = tag[len("<image>") : -len("</image>")]
    assert len(vector.split(",")) == 768
    for messages in sent[1:]:
        # The photo is in an earlier message now: DESIGN.md's retained tag, same vector.
        assert messages[0]["content"] == (
            f"What animal is this?\n<retain_image_emb>{vector}</retain_image_emb>"
        )


def test_older_images_become_references_beyond_the_retained_cap(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(max_retained_vectors=1)
    photos = ["astronaut.png", "chelsea.png", "coffee.png"]
    messages: list[Any] = []
    for name in photos:
        messages += [image_message(data_url(DATA / name)), {"role": "assistant", "content": "ok"}]
    messages.append(image_message(data_url(DATA / "rocket.jpg"), "And this?"))
    reply = httpx.post(
        proxy.url + "/v1/chat/completions", json={"messages": messages}, headers=DRY_RUN, timeout=30
    )
    assert reply.status_code == 200
    sent = [message["content"] for message in reply.json()["messages"]]
    for index, name in enumerate(photos[:2]):
        digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert sent[2 * index] == f'What is this?\n<retain_image_emb ref="sha256:{digest}"/>'
    kept = sent[4].removeprefix("What is this?\n<retain_image_emb>")
    assert kept.endswith("</retain_image_emb>")
    assert len(kept.removesuffix("</retain_image_emb>").split(",")) == 768
    assert sent[6].startswith("And this?\n<image>")


def test_templates_carry_sha256_and_size(
    start_proxy: Callable[..., ProxyServer], reference_vectors: dict[str, np.ndarray]
) -> None:
    proxy = start_proxy(
        image_template="[img {width}x{height} {sha256}]{vector}[/img]",
        retained_image_template="[old {sha256}]",
    )
    photo = DATA / "chelsea.png"
    messages = [
        image_message(data_url(photo)),
        {"role": "assistant", "content": "a cat"},
        image_message(data_url(photo), "again"),
    ]
    reply = httpx.post(
        proxy.url + "/v1/chat/completions", json={"messages": messages}, headers=DRY_RUN, timeout=30
    )
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    sent = reply.json()["messages"]
    assert sent[0]["content"] == f"What is this?\n[old {digest}]"
    head, vector = sent[2]["content"].split("\n")[1].removesuffix("[/img]").split("]")
    assert head == f"[img 451x300 {digest}"
    assert cosine(parse_vector(vector), reference_vectors["chelsea.png"]) >= 0.999


def test_a_bad_image_fails_each_request_that_carries_it_with_its_own_param(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy()
    broken = data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bodies = [
        {"messages": [image_message(broken)]},
        {"messages": [{"role": "system", "content": "be brief"}, image_message(broken)]},
    ]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=body, headers=DRY_RUN)
                    for body in bodies
                )
            )

    first, second = asyncio.run(send_all())
    assert first.status_code == second.status_code == 400
    assert first.json()["error"]["param"] == "messages[0].content[1].image_url"
    assert second.json()["error"]["param"] == "messages[1].content[1].image_url"
    assert images_encoded(proxy.url) == 0
