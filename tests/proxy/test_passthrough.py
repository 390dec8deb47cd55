"""Passthrough: an upstream model on UPSTREAM_VISION_MODELS (or the `passthrough` preset)
receives each image itself as an `image_url` data URL, upright, within
PASSTHROUGH_MAX_SIDE, without EXIF; a model off the list gets today's bridge."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image, ImageOps

from tests.helpers import DRY_RUN, ProxyServer, data_url, image_message, images_encoded
from tests.upstream_server import FakeUpstream

CHAT = "/v1/chat/completions"
ROUTES = "X-Clip-Proxy-Image-Routes"


def phone_photo() -> bytes:
    """A 1200x600 JPEG, left half red, right half blue, stored sideways (EXIF orientation 6:
    turn it 90 degrees clockwise to see it) with a GPS position and a camera make."""
    image = Image.new("RGB", (1200, 600), "blue")
    image.paste("red", (0, 0, 600, 600))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPSInfo: latitude
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def received_image(body: dict[str, Any]) -> Image.Image:
    parts = body["messages"][-1]["content"]
    images = [part for part in parts if part.get("type") == "image_url"]
    assert len(images) == 1, parts
    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_a_model_that_sees_gets_the_image_upright_bounded_and_without_exif(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(upstream_vision_models=["gpt-4o*", "qwen-vl-max"], passthrough_max_side=512)
    encoded_before = images_encoded(proxy.url)
    photo = phone_photo()
    reply = httpx.post(
        proxy.url + CHAT,
        json={
            "model": "gpt-4o-mini",
            "messages": [image_message(data_url(photo, "image/jpeg"), "Which side is red?")],
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    sent = upstream.requests[-1].json
    assert sent["messages"][-1]["content"][0] == {"type": "text", "text": "Which side is red?"}
    seen = received_image(sent)
    assert max(seen.size) <= 512
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(photo)))
    assert upright.size == (600, 1200)  # what a viewer shows: tall, red on top
    assert seen.size == (256, 512)
    assert not seen.getexif()  # no orientation, no GPS, no camera
    assert "exif" not in seen.info and "icc_profile" not in seen.info
    red, blue = seen.getpixel((128, 64)), seen.getpixel((128, 448))
    assert isinstance(red, tuple) and isinstance(blue, tuple)
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue
    # No CLIP ran for it.
    assert images_encoded(proxy.url) == encoded_before


def test_the_dry_run_says_which_way_each_image_went(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(upstream_vision_models=["qwen-vl-*"])
    photo = data_url(phone_photo(), "image/jpeg")
    seeing = httpx.post(
        proxy.url + CHAT,
        json={"model": "qwen-vl-max", "messages": [image_message(photo)]},
        headers=DRY_RUN,
        timeout=60,
    )
    assert seeing.headers[ROUTES] == "1=passthrough"
    blind = httpx.post(
        proxy.url + CHAT,
        json={"model": "deepseek-r1", "messages": [image_message(photo)]},
        headers=DRY_RUN,
        timeout=60,
    )
    assert blind.headers[ROUTES] == "1=bridge"
    # Off the list: today's bridge, the seed's vector inline, no image_url left.
    content = blind.json()["messages"][-1]["content"]
    assert isinstance(content, str) and content.startswith("What is this?\n<image>")
    assert "image_url" not in blind.text


def test_the_passthrough_preset_per_request(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy()
    reply = httpx.post(
        proxy.url + CHAT,
        json={
            "model": "any-vlm",
            "messages": [image_message(data_url(phone_photo(), "image/jpeg"))],
        },
        headers={**DRY_RUN, "X-Clip-Proxy-Preset": "passthrough"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers[ROUTES] == "1=passthrough"
    seen = received_image(reply.json())
    assert seen.size == (600, 1200)  # within the default 2048: upright, not scaled
