"""Describers through a real proxy: real scripted vision servers on loopback (one that
answers, one that fails in each way), the description in the describe preset, the
question in the describer's prompt, fallback order, cooldown, key scrubbing, the cache
over two replicas and the real Redis, and the concurrency limit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import DRY_RUN, ProxyServer, data_url, image_message, metric_value, unique_png
from tests.upstream_server import FakeUpstream
from tests.vision_server import VisionServer, refused_url

CHAT = "/v1/chat/completions"
DESCRIBE = {"X-Clip-Proxy-Preset": "describe"}
# This branch's own Redis database, so that no other test suite shares its keys.
REDIS_URL = "redis://127.0.0.1:6379/12"
ROUTES = "X-Clip-Proxy-Image-Routes"


@pytest.fixture
def vision() -> Iterator[VisionServer]:
    with VisionServer(answer="A red bicycle leaning on a wall; the sign reads <OPEN> & 24h.") as s:
        yield s


@pytest.fixture
def failing() -> Iterator[VisionServer]:
    with VisionServer(answer="never used") as s:
        yield s


def describer(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": base_url, "model": f"{name}-vlm", **extra}


def ask(
    proxy: ProxyServer,
    messages: list[dict[str, Any]],
    *,
    dry_run: bool = True,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    reply = httpx.post(
        proxy.url + CHAT,
        json={"model": "deepseek-r1", "messages": messages},
        headers={**DESCRIBE, **(DRY_RUN if dry_run else {}), **(headers or {})},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return reply


def sent_text(reply: httpx.Response) -> str:
    return str(reply.json()["messages"][-1]["content"])


def test_the_description_reaches_the_prompt_and_the_question_reaches_the_describer(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer
) -> None:
    proxy = start_proxy(describers=[describer("local", vision.base_url)])
    question = "Is the shop open at night?"
    reply = ask(proxy, [image_message(data_url(unique_png()), question)])

    text = sent_text(reply)
    # Escaped like OCR text: the describer's markup cannot close the <image> block.
    assert (
        "Description: A red bicycle leaning on a wall; the sign reads &lt;OPEN&gt; &amp; 24h."
        in text
    )
    assert reply.headers[ROUTES] == "1=described:local"
    assert "describe;dur=" in reply.headers["Server-Timing"]
    asked = vision.requests[-1]
    assert question in asked.prompt
    assert asked.body["model"] == "local-vlm"
    # A clean small PNG goes as it came.
    assert asked.image_url.startswith("data:image/png;base64,")
    assert (
        metric_value(
            proxy.url, "clip_proxy_describer_requests_total", describer="local", outcome="ok"
        )
        == 1
    )


def test_failures_fall_through_in_order_and_are_counted_by_outcome(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer, failing: VisionServer
) -> None:
    proxy = start_proxy(
        describers=[
            describer("gone", refused_url()),
            describer("flaky", failing.base_url, timeout_s=0.5),
            describer("good", vision.base_url),
        ],
        describer_cooldown_s=0,  # every request starts from the first again
    )
    outcomes = {
        "500": "server_error",
        "429": "rate_limited",
        "hang": "timeout",
        "cut": "bad_response",
    }
    for mode, outcome in outcomes.items():
        failing.mode = mode
        reply = ask(proxy, [image_message(data_url(unique_png()))])
        assert reply.headers[ROUTES] == "1=described:good", mode
        assert "Description: A red bicycle" in sent_text(reply)
        assert (
            metric_value(
                proxy.url, "clip_proxy_describer_requests_total", describer="flaky", outcome=outcome
            )
            >= 1
        ), mode
    assert len(failing.requests) == len(outcomes)  # asked before the third, every time
    assert len(vision.requests) == len(outcomes)
    assert metric_value(
        proxy.url, "clip_proxy_describer_requests_total", describer="gone", outcome="unreachable"
    ) == len(outcomes)


def test_when_every_describer_fails_the_image_keeps_the_bridge(
    start_proxy: Callable[..., ProxyServer], failing: VisionServer, upstream: FakeUpstream
) -> None:
    failing.mode = "500"
    proxy = start_proxy(describers=[describer("only", failing.base_url)])
    reply = ask(proxy, [image_message(data_url(unique_png()), "What is it?")])
    assert reply.headers[ROUTES] == "1=fallback"
    text = sent_text(reply)
    assert '<image index="1"' in text and "Description:" not in text
    # A real request too: answered, not failed, for that alone.
    answered = ask(proxy, [image_message(data_url(unique_png()))], dry_run=False)
    assert answered.json()["choices"][0]["message"]["content"]
    assert metric_value(proxy.url, "clip_proxy_describer_fallbacks_total") == 2
    assert metric_value(proxy.url, "clip_proxy_describer_cooldown", describer="only") == 1


def test_a_failed_describer_cools_down_and_comes_back(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer, failing: VisionServer
) -> None:
    failing.mode = "500"
    proxy = start_proxy(
        describers=[describer("first", failing.base_url), describer("second", vision.base_url)],
        describer_cooldown_s=3.0,  # long enough for two requests on a busy machine
    )
    assert ask(proxy, [image_message(data_url(unique_png()))]).headers[ROUTES] == (
        "1=described:second"
    )
    assert len(failing.requests) == 1
    # Cooling down: not asked at all, the second answers at once.
    assert ask(proxy, [image_message(data_url(unique_png()))]).headers[ROUTES] == (
        "1=described:second"
    )
    assert len(failing.requests) == 1
    assert metric_value(proxy.url, "clip_proxy_describer_cooldown", describer="first") == 1
    failing.mode = "ok"
    failing.answer = "The first describer again."
    deadline = time.monotonic() + 10
    while metric_value(proxy.url, "clip_proxy_describer_cooldown", describer="first") == 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    reply = ask(proxy, [image_message(data_url(unique_png()))])
    assert reply.headers[ROUTES] == "1=described:first"
    assert "Description: The first describer again." in sent_text(reply)
    assert len(failing.requests) == 2


def test_the_describer_key_is_sent_and_never_shown(
    start_proxy: Callable[..., ProxyServer],
    vision: VisionServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-vision-" + uuid.uuid4().hex
    monkeypatch.setenv("I26_VISION_KEY", key)
    vision.mode = "quote_key"
    proxy = start_proxy(
        describers=[describer("hosted", vision.base_url, api_key_env="I26_VISION_KEY")]
    )
    reply = ask(proxy, [image_message(data_url(unique_png()))])
    assert vision.requests[-1].headers["Authorization"] == f"Bearer {key}"
    assert key not in reply.text
    assert "I was called with Bearer [redacted]" in sent_text(reply)
    assert key not in httpx.get(proxy.url + "/metrics").text


def test_a_missing_key_variable_stops_the_start(
    test_model_dir: Any, upstream: FakeUpstream
) -> None:
    from pydantic import ValidationError

    from tests.helpers import proxy_settings

    with pytest.raises(ValidationError, match="I26_NOT_SET"):
        proxy_settings(
            test_model_dir,
            upstream.base_url,
            describers=[describer("x", "http://127.0.0.1:9/v1", api_key_env="I26_NOT_SET")],
        )


def test_one_describer_call_for_two_turns_over_two_replicas_sharing_redis(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer
) -> None:
    prefix = f"i26-test-{uuid.uuid4().hex[:8]}:"
    shared = {
        "describers": [describer("local", vision.base_url)],
        "cache_url": REDIS_URL,
        "cache_key_prefix": prefix,
    }
    first, second = start_proxy(**shared), start_proxy(**shared)
    image = image_message(data_url(unique_png()), "What colour is the bicycle?")
    turn_one = ask(first, [image])
    assert "Description: A red bicycle" in sent_text(turn_one)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 10  # the Redis write lands after the answer
        while not list(client.scan_iter(f"{prefix}*")):
            assert time.monotonic() < deadline, "the description never reached Redis"
            time.sleep(0.02)
        # Turn two, on the other replica: the image is retained from turn one, with its
        # own question, so its description is the one already made.
        history = [
            image,
            {"role": "assistant", "content": "It is red."},
            {"role": "user", "content": "And is it leaning on something?"},
        ]
        turn_two = ask(second, history)
        assert "Description: A red bicycle" in str(turn_two.json()["messages"][0]["content"])
        assert turn_two.headers[ROUTES] == "1=described:local"
        assert len(vision.requests) == 1
        # The same image with a new question is a new description.
        ask(second, [image_message(image["content"][1]["image_url"]["url"], "Any people?")])
        assert len(vision.requests) == 2
    finally:
        for stored in client.scan_iter(f"{prefix}*"):
            client.delete(stored)
        client.close()


def test_a_describer_concurrency_limit_is_held(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer
) -> None:
    vision.delay_s = 0.4  # long enough that two are in flight even on a busy machine
    proxy = start_proxy(describers=[describer("local", vision.base_url, concurrency=2)])
    parts: list[Any] = [{"type": "text", "text": "Compare these."}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(unique_png())}} for _ in range(6)]
    reply = ask(proxy, [{"role": "user", "content": parts}])
    assert reply.headers[ROUTES] == ",".join(f"{n}=described:local" for n in range(1, 7))
    assert len(vision.requests) == 6
    assert vision.max_in_flight == 2


def test_the_echo_upstream_shows_the_description_and_a_passed_through_image(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer
) -> None:
    from openai import OpenAI

    proxy = start_proxy(
        upstream_base_url="echo",
        upstream_api_key="",
        describers=[describer("local", vision.base_url)],
        upstream_vision_models=["vlm-*"],
    )
    client = OpenAI(base_url=proxy.url + "/v1", api_key="unused")
    image: Any = image_message(data_url(unique_png()), "What is it?")
    described = client.chat.completions.create(
        model="deepseek-r1",
        messages=[image],
        extra_headers=DESCRIBE,
    )
    answer = str(described.choices[0].message.content)
    assert "described as 'A red bicycle leaning on a wall" in answer, answer
    seen = client.chat.completions.create(model="vlm-large", messages=[image])
    answer = str(seen.choices[0].message.content)
    assert "the image itself, a " in answer and "-character data URL" in answer, answer


def test_a_phone_photo_reaches_the_describer_upright_and_without_exif(
    start_proxy: Callable[..., ProxyServer], vision: VisionServer
) -> None:
    import io

    from PIL import Image

    from tests.proxy.test_passthrough import phone_photo

    proxy = start_proxy(describers=[describer("local", vision.base_url)], passthrough_max_side=512)
    ask(proxy, [image_message(data_url(phone_photo(), "image/jpeg"))])
    asked = vision.requests[-1]
    assert asked.image_url.startswith("data:image/jpeg;base64,")
    seen = Image.open(io.BytesIO(asked.image_bytes))
    assert seen.size == (256, 512) and not seen.getexif()
