"""What a client sees when something is wrong: a clear 4xx/5xx in OpenAI's shape, and a
server that goes on answering."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.helpers import DATA, ProxyServer, data_url, free_port, proxy_settings
from tests.upstream_server import FakeUpstream, Reply

CHAT = "/v1/chat/completions"


def gif(frames: int) -> bytes:
    images = [Image.new("RGB", (8, 8), (index * 60, 0, 0)) for index in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


def with_image(url: str) -> dict[str, Any]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
    }


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["param"] == param
    return error  # type: ignore[no-any-return]


PNG = (DATA / "camera.png").read_bytes()
BAD_REQUESTS = [
    ("not-json", b"{not json", None, "not valid JSON"),
    ("array", b"[1, 2]", None, "JSON object"),
    ("no-messages", b'{"model": "x"}', "messages", "Missing required parameter: 'messages'."),
    ("empty-messages", b'{"messages": []}', "messages", "at least 1"),
    (
        "bad-role",
        b'{"messages": [{"content": "x"}]}',
        "messages[0].role",
        "Missing required parameter: 'messages[0].role'.",
    ),
    (
        "stream-type",
        b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        "stream",
        "boolean",
    ),
    (
        "unknown-part",
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}
        ).encode(),
        "messages[0].content[0].file.file_data",
        "file_data",
    ),
    (
        "no-url",
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
        ).encode(),
        "messages[0].content[0].image_url.url",
        "Missing required parameter",
    ),
    ("invalid-utf8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "JSON"),
    ("deep-json", b"[" * 5000 + b"]" * 5000, None, "JSON"),
]
IMAGE_PARAM = "messages[0].content[1].image_url"
BAD_IMAGES = [
    ("bad-base64", "data:image/png;base64,!!!notbase64", "not valid base64"),
    ("truncated-base64", data_url(PNG)[:-7], "not valid base64"),
    (
        "text-media-type",
        "data:text/plain;base64," + base64.b64encode(b"hi").decode(),
        "not an image",
    ),
    (
        "not-an-image",
        "data:image/png;base64," + base64.b64encode(b"hello").decode(),
        "not a supported image",
    ),
    (
        "svg",
        "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode(),
        "not a supported image",
    ),
    ("truncated-png", data_url(PNG[:4000]), "truncated"),
    ("animated-gif", data_url(gif(3), "image/gif"), "animated"),
    ("zero-bytes", "data:image/png;base64,", "empty"),
    ("forbidden-url", "http://169.254.169.254/latest", "non-public"),
]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_malformed_requests_are_400(
    proxy: ProxyServer, body: bytes, param: str | None, message: str
) -> None:
    response = httpx.post(
        proxy.url + CHAT, content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_openai_error(response, 400, param)
    assert message in error["message"]


@pytest.mark.parametrize(
    ("url", "message"), [case[1:] for case in BAD_IMAGES], ids=[case[0] for case in BAD_IMAGES]
)
def test_bad_images_are_400_and_name_the_part(
    proxy: ProxyServer, upstream: FakeUpstream, url: str, message: str
) -> None:
    response = httpx.post(proxy.url + CHAT, json=with_image(url))
    error = assert_openai_error(response, 400, IMAGE_PARAM)
    assert message in error["message"]
    assert upstream.requests == []
    # The server is still up and the next good request succeeds.
    good = httpx.post(proxy.url + CHAT, json=with_image(data_url(PNG)), timeout=30)
    assert good.status_code == 200


def test_one_bad_image_fails_its_request_only(proxy: ProxyServer) -> None:
    body = with_image(data_url(PNG))
    body["messages"][0]["content"].append(
        {"type": "image_url", "image_url": {"url": data_url(PNG[:3000])}}
    )
    response = httpx.post(proxy.url + CHAT, json=body)
    assert_openai_error(response, 400, "messages[0].content[2].image_url")


def test_limits(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(max_images_per_request=2, max_image_bytes=100_000, max_body_bytes=500_000)
    three = with_image(data_url(PNG[:10]))
    three["messages"][0]["content"] += [
        {"type": "image_url", "image_url": {"url": data_url(PNG[:10])}}
    ] * 2
    assert (
        assert_openai_error(httpx.post(proxy.url + CHAT, json=three), 400, "messages")["code"]
        == "too_many_images"
    )
    big_image = httpx.post(proxy.url + CHAT, json=with_image(data_url(PNG)))  # 139 kB
    assert_openai_error(big_image, 413, IMAGE_PARAM)
    big_body = httpx.post(proxy.url + CHAT, json=with_image(data_url(b"\0" * 600_000)))
    assert_openai_error(big_body, 413, None)
    # Chunked upload (no Content-Length) is capped while it streams in.
    chunks = (b"x" * 100_000 for _ in range(10))
    streamed = httpx.post(
        proxy.url + CHAT, content=chunks, headers={"Content-Type": "application/json"}
    )
    assert_openai_error(streamed, 413, None)
    uploads = httpx.post(
        proxy.url + CHAT,
        data={"prompt": "x"},
        files=[
            ("image", ("a.png", PNG[:50_000])),
            ("image", ("b.png", PNG[:50_000])),
            ("image", ("c.png", PNG[:50_000])),
        ],
    )
    assert_openai_error(uploads, 400, "image")


def test_multipart_errors(proxy: ProxyServer) -> None:
    unknown_field = httpx.post(
        proxy.url + CHAT, files=[("attachment", ("a.png", PNG))], data={"prompt": "x"}
    )
    assert_openai_error(unknown_field, 400, "attachment")
    bad_messages = httpx.post(proxy.url + CHAT, data={"messages": "[not json"})
    assert_openai_error(bad_messages, 400, "messages")
    both = httpx.post(proxy.url + CHAT, data={"messages": "[]", "prompt": "x"})
    assert_openai_error(both, 400, "prompt")
    broken = httpx.post(
        proxy.url + CHAT, files=[("image", ("a.png", b"not an image"))], data={"prompt": "x"}
    )
    assert_openai_error(broken, 400, "image[0]")


def test_a_client_written_upload_url_does_not_bind_to_an_upload(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    """Uploads travel as the proxy's own typed parts: `upload:0` written by a client is a URL
    like any other (and refused as one, where it stands), never the first uploaded image
    encoded and counted a second time."""
    history: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "earlier"},
                {"type": "image_url", "image_url": {"url": "upload:0"}},
            ],
        },
        {"role": "assistant", "content": "a camera"},
        {"role": "user", "content": "and now?"},
    ]
    response = httpx.post(
        proxy.url + CHAT,
        data={"messages": json.dumps(history)},
        files=[("image", ("a.png", PNG))],
        headers={"X-Clip-Proxy-Dry-Run": "true"},
    )
    error = assert_openai_error(response, 400, "messages[0].content[1].image_url")
    assert error["code"] == "forbidden_url"
    assert upstream.requests == []
    # The upload alone still joins the last user message, once.
    history[0]["content"] = "earlier"
    alone = httpx.post(
        proxy.url + CHAT,
        data={"messages": json.dumps(history)},
        files=[("image", ("a.png", PNG))],
        headers={"X-Clip-Proxy-Dry-Run": "true"},
    )
    assert alone.status_code == 200, alone.text
    sent = alone.json()["messages"]
    assert sent[0]["content"] == "earlier"
    assert sent[2]["content"].startswith("and now?\n<image>")
    assert "<image>" not in json.dumps(sent[:2]) and "retain_image_emb" not in alone.text


def test_unknown_route_and_method_are_openai_shaped(proxy: ProxyServer) -> None:
    assert_openai_error(httpx.get(proxy.url + "/v1/nothing"), 404, None)
    assert_openai_error(httpx.get(proxy.url + CHAT), 405, None)


def test_a_bug_answers_500_in_openai_shape_with_its_request_id(
    test_model_dir: Path, upstream: FakeUpstream
) -> None:
    """An exception no handler knows (a bug) still leaves as OpenAI's error, quoting nothing
    of the exception, with the request id a user can report."""
    server = ProxyServer(proxy_settings(test_model_dir, upstream.base_url))

    async def broken() -> None:
        raise RuntimeError("bug holding sk-upstream-secret")

    server.app.add_api_route("/v1/broken", broken)
    server.start(wait_ready=False)
    try:
        response = httpx.get(server.url + "/v1/broken", headers={"X-Request-ID": "bug-7"})
        error = assert_openai_error(response, 500, None)
        assert error == {
            "message": "internal error in clip-proxy",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert response.headers["x-request-id"] == response.json()["request_id"] == "bug-7"
        assert "sk-upstream-secret" not in response.text
        assert httpx.get(server.url + "/healthz").status_code == 200  # and it goes on
    finally:
        server.stop()


TEXT = {"messages": [{"role": "user", "content": "hi"}]}


def test_upstream_error_status_and_body_are_relayed(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    body = {
        "error": {
            "message": "model overloaded",
            "type": "overloaded",
            "param": None,
            "code": "busy",
        }
    }
    # A 400 is never retried: the client sees the upstream's own status and body at once.
    upstream.script(Reply(status=400, body=body))
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="deepseek-r1", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 400
    assert caught.value.body == body["error"]
    assert len(upstream.requests) == 1


def test_non_json_upstream_error_is_wrapped(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    # A 502 from a gateway: retried (the upstream's default), then relayed, wrapped.
    page = Reply(
        status=502, raw_body=b"<html>bad gateway</html>", headers={"content-type": "text/html"}
    )
    upstream.script(page, page, page)
    error = assert_openai_error(httpx.post(proxy.url + CHAT, json=TEXT, timeout=30), 502, None)
    assert "<html>bad gateway</html>" in error["message"] and error["code"] == "502"
    assert len(upstream.requests) == 3


def test_unreachable_upstream_is_502(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    error = assert_openai_error(httpx.post(proxy.url + CHAT, json=TEXT), 502, None)
    assert error["code"] == "upstream_unreachable"
    assert "sk-upstream-secret" not in json.dumps(error)


def test_upstream_timeout_is_504(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(upstream_read_timeout_s=0.5)
    upstream.script(Reply(stall_before_headers_s=2))
    error = assert_openai_error(httpx.post(proxy.url + CHAT, json=TEXT, timeout=10), 504, None)
    assert error["code"] == "upstream_timeout"


def test_failure_mid_stream_arrives_as_an_error_event(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    # Paced like tokens: aiohttp raises a reset before handing over bytes that arrived
    # in the same read, so chunks sent back to back with the reset would be lost.
    upstream.script(Reply(reset_after_chunks=3, chunk_delay_s=0.05))
    response = httpx.post(proxy.url + CHAT, json={**TEXT, "stream": True}, timeout=10)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert len(events) == 4
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_truncated"
    assert httpx.post(proxy.url + CHAT, json=TEXT).status_code == 200


def test_busy_upstream_pool_is_503_with_retry_after(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    """All upstream connections taken: local overload (503, retry later), not a 504."""
    proxy = start_proxy(upstream_max_connections=1, upstream_connect_timeout_s=0.5)
    upstream.script(Reply(stall_before_headers_s=2))

    async def both() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            slow = asyncio.create_task(client.post(CHAT, json=TEXT))
            await asyncio.sleep(0.3)  # the slow request holds the only connection
            refused = await client.post(CHAT, json=TEXT)
            return await slow, refused

    slow, refused = asyncio.run(both())
    assert slow.status_code == 200
    error = assert_openai_error(refused, 503, None)
    assert error["code"] == "overloaded" and refused.headers["retry-after"] == "1"
