"""`Server-Timing` names the describe preset's models when they ran for the request: `ocr`
and `caption` beside fetch, decode, encode; the seed preset's answers carry neither."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import DRY_RUN, ProxyServer, data_url, image_message, unique_png

CHAT = "/v1/chat/completions"


def stages(reply: httpx.Response) -> dict[str, float]:
    timing = {}
    for entry in reply.headers["server-timing"].split(","):
        name, _, rest = entry.strip().partition(";")
        timing[name] = float(rest.split("dur=")[1].split(";")[0])
    return timing


def test_ocr_and_caption_appear_when_they_ran(
    start_proxy: Callable[..., ProxyServer], proxy: ProxyServer, captioner_dir: Path
) -> None:
    describing = start_proxy(
        prompt_preset="describe",
        caption_model=str(captioner_dir),
        ocr_enabled=True,
        ocr_threads=1,
    )
    body = {"messages": [image_message(data_url(unique_png()))]}
    reply = httpx.post(describing.url + CHAT, json=body, headers=DRY_RUN, timeout=60)
    assert reply.status_code == 200, reply.text
    timing = stages(reply)
    assert timing["ocr"] > 0 and timing["caption"] > 0
    assert list(timing)[-1] == "proxy"
    seed = httpx.post(proxy.url + CHAT, json=body, headers=DRY_RUN, timeout=60)
    assert seed.status_code == 200
    assert "encode" in stages(seed) or "images" in stages(seed)
    assert "ocr" not in stages(seed) and "caption" not in stages(seed)
