"""One decode per miss: under the describe preset, CLIP, OCR and the captioner read one
decode of an image's bytes (`clip_proxy_image_decodes_total`, read from a real proxy's
/metrics); a hit decodes nothing; the seed preset still decodes a JPEG at a reduced scale."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image

from tests.helpers import (
    DATA,
    DRY_RUN,
    ProxyServer,
    data_url,
    fresh_png,
    image_message,
    metric_value,
)

CHAT = "/v1/chat/completions"
DECODES = "clip_proxy_image_decodes_total"


def decodes(proxy: ProxyServer) -> dict[str, float]:
    return {
        scale: metric_value(proxy.url, DECODES, scale=scale)
        for scale in ("full", "reduced", "device")
    }


def fresh_jpeg(seed: int, size: tuple[int, int] = (1280, 960)) -> bytes:
    """A JPEG photo no other test sends (a real photo, scaled up so libjpeg could reduce it)."""
    photo = Image.open(DATA / "rocket.jpg").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=85, comment=f"seed {seed}".encode())
    return buffer.getvalue()


def send(proxy: ProxyServer, *images: bytes) -> httpx.Response:
    body = {"messages": [image_message(data_url(image)) for image in images]}
    reply = httpx.post(proxy.url + CHAT, json=body, headers=DRY_RUN, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply


def test_a_describe_miss_decodes_once_for_clip_ocr_and_the_captioner(
    start_proxy: Callable[..., ProxyServer], captioner_dir: Path
) -> None:
    proxy = start_proxy(
        prompt_preset="describe",
        ocr_enabled=True,
        ocr_threads=1,
        caption_model=str(captioner_dir),
    )
    before = decodes(proxy)
    ocr_runs = metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count")
    captions = metric_value(proxy.url, "clip_proxy_caption_duration_seconds_count")

    reply = send(proxy, fresh_jpeg(2701))

    content = str(reply.json()["messages"][-1]["content"])
    assert "Text in the image:" in content and "Caption: " in content
    after = decodes(proxy)
    assert after["full"] - before["full"] == 1  # one decode, shared
    assert after["reduced"] - before["reduced"] == 0  # CLIP reduced that one decode
    assert metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count") - ocr_runs == 1
    assert metric_value(proxy.url, "clip_proxy_caption_duration_seconds_count") - captions == 1

    send(proxy, fresh_jpeg(2701))  # every part cached: nothing decoded

    assert decodes(proxy) == after


def test_a_png_miss_decodes_once_and_the_seed_preset_keeps_its_reduced_decode(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe", ocr_enabled=True, ocr_threads=1)
    before = decodes(proxy)

    send(proxy, fresh_png(2702))

    after = decodes(proxy)
    assert (after["full"] - before["full"], after["reduced"] - before["reduced"]) == (1, 0)

    seed = httpx.post(
        proxy.url + CHAT,
        json={"messages": [image_message(data_url(fresh_jpeg(2703)))]},
        headers={**DRY_RUN, "X-Clip-Proxy-Preset": "seed"},
        timeout=120,
    )

    assert seed.status_code == 200, seed.text
    # CLIP alone needs no full picture: libjpeg decodes the JPEG already scaled down.
    last = decodes(proxy)
    assert (last["full"] - after["full"], last["reduced"] - after["reduced"]) == (0, 1)
