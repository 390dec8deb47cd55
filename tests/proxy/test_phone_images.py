"""The images phones send, through a real proxy: an MPO (a JPEG with a second image in its
MPF index, as Ultra HDR and portrait photos are), a HEIC written by pillow-heif, an AVIF;
animations stay refused; a form field in a broken text encoding is refused by name."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pillow_heif
import pytest
from PIL import Image

from tests.helpers import DATA, ProxyServer, cosine, data_url, image_message, parse_vector
from tests.upstream_server import FakeUpstream

IMAGE_TAG = re.compile(r"<image>([^<]*)</image>")


def photo() -> Image.Image:
    return Image.open(DATA / "chelsea.png").convert("RGB")


def mpo_bytes(primary: Image.Image) -> bytes:
    buffer = io.BytesIO()
    depth_map = primary.convert("L").resize((primary.width // 4, primary.height // 4))
    primary.save(buffer, "MPO", save_all=True, append_images=[depth_map.convert("RGB")])
    return buffer.getvalue()


def heic_bytes(image: Image.Image) -> bytes:
    heif = pillow_heif.from_bytes(mode="RGB", size=image.size, data=image.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=95)
    return buffer.getvalue()


def sent_vector(upstream: FakeUpstream) -> np.ndarray:
    content = upstream.requests[-1].json["messages"][-1]["content"]
    (vector,) = IMAGE_TAG.findall(content)
    return parse_vector(vector)


def vector_of(proxy: ProxyServer, upstream: FakeUpstream, url: str) -> np.ndarray:
    body = {"messages": [image_message(url)]}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return sent_vector(upstream)


def test_mpo_heic_and_avif_get_the_vector_of_the_same_photo(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    picture = photo()
    png = vector_of(proxy, upstream, data_url((DATA / "chelsea.png").read_bytes()))
    mpo = mpo_bytes(picture)
    assert b"MPF\0" in mpo[:4096]
    lossy = {
        "MPO": vector_of(proxy, upstream, data_url(mpo, "image/jpeg")),
        "HEIC": vector_of(proxy, upstream, data_url(heic_bytes(picture), "image/heic")),
    }
    buffer = io.BytesIO()
    picture.save(buffer, "AVIF", quality=90)
    lossy["AVIF"] = vector_of(proxy, upstream, data_url(buffer.getvalue(), "image/avif"))
    for name, vector in lossy.items():
        # The same photo through a lossy codec: the same vector, near enough.
        assert cosine(vector, png) > 0.98, name


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_curl_uploads_a_heic(proxy: ProxyServer, upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic_bytes(photo()))
    form = ["-F", "prompt=what is this?", "-F", f"image=@{path};type=image/heic"]
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *form, proxy.url + "/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(sent_vector(upstream)) == 768


def test_animated_avif_is_refused(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "AVIF", save_all=True, append_images=frames[1:], duration=100)
    body = {"messages": [image_message(data_url(buffer.getvalue(), "image/avif"))]}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "animated" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"
    assert upstream.requests == []


def test_form_field_in_a_broken_encoding_is_400_naming_it(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    files: dict[str, Any] = {
        "model": (None, b"deepseek-r1"),
        "prompt": (None, "caf\u00e9 ".encode("latin-1") + b"\xff\xfe"),
        "image": ("cat.png", (DATA / "chelsea.png").read_bytes(), "image/png"),
    }
    response = httpx.post(proxy.url + "/v1/chat/completions", files=files, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt"
    assert "'prompt'" in error["message"] and "utf-8" in error["message"]
    assert upstream.requests == []
    # Valid UTF-8 beyond ASCII is text like any other.
    files["prompt"] = (None, "caf\u00e9 \u732b".encode())
    response = httpx.post(proxy.url + "/v1/chat/completions", files=files, timeout=30)
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].json["messages"][-1]["content"].startswith("caf\u00e9 \u732b\n")


def test_docs_need_a_key_when_keys_are_set(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(api_keys="doc-key")
    for path in ("/docs", "/redoc", "/openapi.json"):
        refused = httpx.get(proxy.url + path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"
        allowed = httpx.get(proxy.url + path, headers={"Authorization": "Bearer doc-key"})
        assert allowed.status_code == 200, path
    schema = httpx.get(proxy.url + "/openapi.json", headers={"Authorization": "Bearer doc-key"})
    assert "/v1/chat/completions" in schema.json()["paths"]


def test_docs_can_be_turned_off(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(docs=False)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(proxy.url + path).status_code == 404, path
    assert httpx.get(proxy.url + "/healthz").status_code == 200


def test_docs_stay_open_without_keys(proxy: ProxyServer) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(proxy.url + path).status_code == 200, path
