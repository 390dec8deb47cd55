"""Errors named as OpenAI names them, and worded so that a first-hour mistake points to its
fix: the missing field, the unreadable image, the unknown route, a JSON body under curl's
default content type, raw base64 where a URL belongs, a private image URL, a limit's
setting, the formats read, and an upstream that cannot be reached (host and cause)."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.helpers import DATA, ProxyServer, data_url, free_port, image_message

CHAT = "/v1/chat/completions"
PNG = (DATA / "camera.png").read_bytes()


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "deepseek-r1"}, "messages"),
        ("/v1/embeddings", {"model": "clip"}, "input"),
        (CHAT, {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ],
)
def test_a_missing_field_is_missing_required_parameter(
    proxy: ProxyServer, path: str, body: dict[str, Any], param: str
) -> None:
    error = error_of(httpx.post(proxy.url + path, json=body, timeout=10), 400)
    assert error["code"] == "missing_required_parameter"
    assert error["message"] == f"Missing required parameter: '{param}'."
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_an_unreadable_image_is_invalid_image_format(proxy: ProxyServer) -> None:
    broken = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(proxy).chat.completions.create(model="deepseek-r1", messages=[image_message(broken)])  # type: ignore[list-item]
    error = raised.value.response.json()["error"]
    assert error["code"] == "invalid_image_format"
    assert error["param"] == "messages[0].content[1].image_url"
    assert "PNG, JPEG, WEBP, GIF" in error["message"]  # the formats read


def test_an_unsupported_format_lists_the_formats_read(proxy: ProxyServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    tiff = "data:image/tiff;base64," + base64.b64encode(buffer.getvalue()).decode()
    reply = httpx.post(proxy.url + CHAT, json={"messages": [image_message(tiff)]}, timeout=10)
    error = error_of(reply, 400)
    assert error["code"] == "invalid_image_format"
    assert (
        "TIFF" in error["message"]
        and "PNG, JPEG, WEBP, GIF, HEIC/HEIF or AVIF" in (error["message"])
    )


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_an_unknown_route_is_an_invalid_url(proxy: ProxyServer, method: str) -> None:
    reply = httpx.request(method, proxy.url + "/v1/chat/completion", json={}, timeout=10)
    error = error_of(reply, 404)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"Invalid URL ({method} /v1/chat/completion)"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_d_with_json_is_read_as_json(proxy: ProxyServer) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    # `curl -d` labels its body application/x-www-form-urlencoded.
    done = subprocess.run(
        ["curl", "-sS", "-d", body, proxy.url + CHAT],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["choices"][0]["message"]["content"], done.stdout


def test_broken_json_under_the_form_type_is_refused_as_json(proxy: ProxyServer) -> None:
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = httpx.post(proxy.url + CHAT, content=b'{"messages": [', headers=form_type)
    assert "not valid JSON" in error_of(reply, 400)["message"]


def test_a_form_without_a_prompt_says_form_not_multipart(proxy: ProxyServer) -> None:
    reply = httpx.post(proxy.url + CHAT, data={"model": "deepseek-r1"}, timeout=10)
    error = error_of(reply, 400)
    assert error["param"] == "messages" and "multipart" not in error["message"]
    assert "form request needs 'prompt' or 'messages'" in error["message"]
    upload = httpx.post(proxy.url + CHAT, files={"model": (None, "deepseek-r1")}, timeout=10)
    assert "multipart request needs" in error_of(upload, 400)["message"]


def test_raw_base64_where_a_url_belongs_says_to_add_the_prefix(proxy: ProxyServer) -> None:
    raw = data_url(PNG).removeprefix("data:image/png;base64,")
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(proxy).chat.completions.create(model="deepseek-r1", messages=[image_message(raw)])  # type: ignore[list-item]
    error = raised.value.response.json()["error"]
    assert "data:image/png;base64," in error["message"] and "raw base64" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"
    assert raw[:40] not in error["message"]  # the client's bytes are not echoed


def test_a_private_image_url_names_the_allow_settings(proxy: ProxyServer) -> None:
    url = f"http://127.0.0.1:{free_port()}/cat.png"
    reply = httpx.post(proxy.url + CHAT, json={"messages": [image_message(url)]}, timeout=10)
    error = error_of(reply, 400)
    assert error["code"] == "forbidden_url"
    assert "CLIP_PROXY_FETCH_ALLOW_HOSTS" in error["message"]
    assert "CLIP_PROXY_FETCH_ALLOW_NETWORKS" in error["message"]


def test_a_413_names_the_setting_that_set_the_limit(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(max_image_bytes=1000, max_body_bytes=200_000, wait_ready=False)
    image = httpx.post(proxy.url + CHAT, json={"messages": [image_message(data_url(PNG))]})
    assert "CLIP_PROXY_MAX_IMAGE_BYTES" in error_of(image, 413)["message"]
    upload = httpx.post(proxy.url + CHAT, data={"prompt": "x"}, files={"image": ("a.png", PNG)})
    assert "CLIP_PROXY_MAX_IMAGE_BYTES" in error_of(upload, 413)["message"]
    big = {"messages": [{"role": "user", "content": "x" * 300_000}]}
    body = httpx.post(proxy.url + CHAT, json=big)
    assert "CLIP_PROXY_MAX_BODY_BYTES" in error_of(body, 413)["message"]


@pytest.mark.parametrize(
    ("host", "cause"),
    [("127.0.0.1:{port}", "connection refused"), ("no-such-upstream.invalid:80", "DNS")],
    ids=["refused", "dns"],
)
def test_an_unreachable_upstream_is_named_with_its_cause(
    start_proxy: Callable[..., ProxyServer],
    caplog: pytest.LogCaptureFixture,
    host: str,
    cause: str,
) -> None:
    host = host.format(port=free_port())
    proxy = start_proxy(
        upstream_base_url=f"http://{host}/v1", upstream_max_retries=0, wait_ready=False
    )
    caplog.set_level(logging.WARNING, logger="app.upstream.client")
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(proxy).chat.completions.create(
            model="deepseek-r1", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 502
    error = raised.value.response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert host in error["message"] and cause in error["message"]
    logged = [r for r in caplog.records if r.getMessage() == "upstream failed"]
    assert logged and logged[-1].upstream == host  # type: ignore[attr-defined]
    assert cause in logged[-1].error  # type: ignore[attr-defined]
