"""A generated corpus of hostile and odd input: every invalid case gets a 4xx in OpenAI's
error shape, every valid-but-odd image (CMYK, 16-bit, palette with transparency,
EXIF-rotated, 1x1...) gets a 200, none gets a 5xx, and a good request succeeds afterwards.

Image payloads travel both as base64 data URLs in JSON and as multipart uploads.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import DATA, ProxyServer, proxy_settings
from tests.upstream_server import FakeUpstream

BAD, OK = "4xx", "200"
# Flipped bits inside JPEG entropy data still decode (to a garbled picture): either answer is
# right for those, so long as it is not a 5xx.
EITHER = "4xx or 200"
MAX_BODY = 4 * 1024 * 1024


@dataclass
class Case:
    name: str
    expect: str
    json_body: bytes | None = None  # raw request body (JSON requests)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None  # multipart uploads
    form: dict[str, str] | None = None


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo() -> Image.Image:
    return Image.open(DATA / "chelsea.png").convert("RGB").resize((96, 64))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions and carries almost no data: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def odd_valid_images() -> dict[str, bytes]:
    base = photo()
    sixteen = Image.new("I;16", (64, 48))
    sixteen.putdata([(x * 1000) % 65536 for x in range(64 * 48)])
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rotated_exif = Image.Exif()
    rotated_exif[0x0112] = 6  # Orientation: rotate 90 CW
    return {
        "1x1": encode(Image.new("RGB", (1, 1), "red"), "PNG"),
        "2x1": encode(Image.new("RGB", (2, 1), "red"), "PNG"),
        "cmyk-jpeg": encode(base.convert("CMYK"), "JPEG"),
        "16-bit-png": encode(sixteen, "PNG"),
        "palette-transparency": encode(palette, "PNG", transparency=0),
        "exif-rotated-jpeg": encode(base, "JPEG", exif=rotated_exif),
        "grey-L": encode(base.convert("L"), "PNG"),
        "grey-alpha-LA": encode(base.convert("LA"), "PNG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "1-bit": encode(base.convert("1"), "PNG"),
        "single-frame-gif": encode(base, "GIF"),
        "webp": encode(base, "WEBP"),
        "progressive-jpeg": encode(base, "JPEG", progressive=True),
    }


def corrupted_images() -> dict[str, bytes]:
    cases = {}
    for fmt in ("PNG", "JPEG", "GIF"):
        corrupt = bytearray(encode(photo(), fmt))
        for offset in range(len(corrupt) // 3, len(corrupt) - 20, 97):
            corrupt[offset] ^= 0xFF
        cases[f"corrupted-{fmt.lower()}"] = bytes(corrupt)
    return cases


def invalid_images() -> dict[str, bytes]:
    base = photo()
    good_png, good_jpeg, good_gif = encode(base, "PNG"), encode(base, "JPEG"), encode(base, "GIF")
    frames = [base, base.rotate(90), base.rotate(180)]
    cases: dict[str, bytes] = {
        "zero-bytes": b"",
        "text": b"hello, I am not an image",
        "html": b"<html><body>no</body></html>",
        "json": b'{"image": true}',
        "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip": b"PK\x03\x04" + b"\0" * 60,
        "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 57,
        "png-magic-only": b"\x89PNG\r\n\x1a\n",
        "jpeg-magic-only": b"\xff\xd8\xff",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        "svg-xml": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        "tiff": encode(base, "TIFF"),
        "bmp": encode(base, "BMP"),
        "ico": encode(base, "ICO"),
        "animated-gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "animated-webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "animated-png": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "png-bomb-100000": png_header_only(100_000, 100_000),
        "png-bomb-65535": png_header_only(65_535, 65_535),
        "png-bomb-7000": png_header_only(7_000, 7_000),
        "gif-bomb-65535": gif_header_only(65_535, 65_535),
        "100000x1": encode(Image.new("L", (100_000, 1)), "PNG"),
        "1x100000": encode(Image.new("L", (1, 100_000)), "PNG"),
        "300x2": encode(Image.new("RGB", (300, 2)), "PNG"),
        "png-zero-width": png_header_only(0, 10),
    }
    for seed in range(6):
        cases[f"random-bytes-{seed}"] = bytes((seed * 131 + i * 7919) % 256 for i in range(512))
    for name, data in (("png", good_png), ("jpeg", good_jpeg), ("gif", good_gif)):
        for fraction in (0.05, 0.2, 0.4, 0.6, 0.8):
            cases[f"truncated-{name}-{fraction}"] = data[: int(len(data) * fraction)]
    return cases


def chat_with(url: str) -> bytes:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return json.dumps({"messages": [{"role": "user", "content": parts}]}).encode()


def as_data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def message_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def json_cases() -> Iterator[Case]:
    good = as_data_url(encode(photo(), "PNG"))
    b64 = good.split(",", 1)[1]
    for cut in (1, 2, 3, 5, 101, 1001, len(b64) - 1, len(b64) - 2, len(b64) - 3):
        yield Case(f"b64-truncated-{cut}", BAD, chat_with(f"data:image/png;base64,{b64[:cut]}"))
    for index, junk in enumerate(["!", "*", "%%", "\u00e9", "====", "-_", "\\n", "\x00", " ", "@"]):
        middle = len(b64) // 2
        url = f"data:image/png;base64,{b64[:middle]}{junk}{b64[middle:]}"
        yield Case(f"b64-invalid-{index}", BAD, chat_with(url))
    for mime in (
        "text/plain",
        "application/pdf",
        "application/octet-stream",
        "video/mp4",
        "audio/wav",
        "text/html",
        "application/json",
        "image",
    ):
        yield Case(f"media-type-{mime}", BAD, chat_with(f"data:{mime};base64,{b64}"))
    for index, url in enumerate(
        [
            "not a url",
            "javascript:alert(1)",
            "data:",
            "data:,",
            "data:image/png,rawbytes",
            "data:image/png;base64",
            "http://",
            "//example",
            "ws://127.0.0.1/x.png",
        ]
    ):
        yield Case(f"bad-url-{index}", BAD, chat_with(url))
    user = {"role": "user", "content": "hi"}
    wrong_types: list[Any] = [
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": 1},
        {"messages": {}},
        {"messages": []},
        {"messages": [1]},
        {"messages": ["hi"]},
        {"messages": [None]},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": 5, "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": {"text": "x"}}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}
            ]
        },
        {"messages": [{"role": "user", "content": ["just a string"]}]},
        {"messages": [{"role": "user", "content": [5]}]},
        {"messages": [user], "model": 5},
        {"messages": [user], "model": ["a"]},
        {"messages": [user], "stream": [1]},
        {"messages": [user], "stream": {"a": 1}},
    ]
    for index, body in enumerate(wrong_types):
        yield Case(f"wrong-type-{index}", BAD, json.dumps(body).encode())
    for index, raw in enumerate(
        [
            b"",
            b"null",
            b"[]",
            b'"text"',
            b"42",
            b"{",
            b"{'a': 1}",
            b'{"messages": [}',
            b"\xef\xbb\xbf{}",
            b"NaN",
        ]
    ):
        yield Case(f"not-an-object-{index}", BAD, raw)
    # A part type the proxy does not bridge passes through untouched; `file` (not read yet)
    # and a part without a string type are refused.
    for kind in ("audio", "input_audio", "video", "", "IMAGE_URL", "image", "file", None, 3):
        part = {"type": kind, "data": "x"} if kind is not None else {"data": "x"}
        body = {"messages": [{"role": "user", "content": [part]}]}
        expected = BAD if kind in ("file", None, 3) else OK
        yield Case(f"unknown-part-{kind}", expected, json.dumps(body).encode())
    for index, raw in enumerate(
        [
            b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
            b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}',
            b'{"messages": [{"role": "\xed\xa0\x80", "content": "x"}]}',
            b'{"model": "\xf8\x88\x80\x80\x80", "messages": []}',
            b'{"messages\x80": 1}',
        ]
    ):
        yield Case(f"invalid-utf8-{index}", BAD, raw)
    yield Case("huge-json", BAD, message_body(messages=[user], pad="x" * (MAX_BODY + 10)))
    yield Case("many-messages", BAD, message_body(messages=[{"role": 1}] * 100_000))
    for depth in (2_000, 100_000):
        yield Case(f"nested-{depth}", BAD, b'{"messages": ' + b"[" * depth + b"]" * depth + b"}")
    nested: Any = "x"
    for _ in range(600):
        nested = {"a": nested}
    yield Case("nested-extra-field", BAD, message_body(messages=[user], metadata=nested))
    parts = [{"type": "image_url", "image_url": {"url": good}}] * 17
    yield Case("too-many-images", BAD, message_body(messages=[{"role": "user", "content": parts}]))


def image_cases() -> Iterator[Case]:
    for name, data in invalid_images().items():
        yield Case(f"data-url-{name}", BAD, chat_with(as_data_url(data)))
        yield Case(f"upload-{name}", BAD, files=[("image", ("x.png", data, "image/png"))])
    for name, data in corrupted_images().items():
        yield Case(f"data-url-{name}", EITHER, chat_with(as_data_url(data)))
        yield Case(f"upload-{name}", EITHER, files=[("image", ("x.png", data, "image/png"))])
    for name, data in odd_valid_images().items():
        yield Case(f"data-url-{name}", OK, chat_with(as_data_url(data)))
        yield Case(f"upload-{name}", OK, files=[("image", ("x.png", data, "image/png"))])


def multipart_cases() -> Iterator[Case]:
    good = encode(photo(), "PNG")
    upload = ("image", ("cat.png", good, "image/png"))
    yield Case("mp-wrong-file-field", BAD, files=[("picture", ("cat.png", good, "image/png"))])
    yield Case("mp-messages-not-json", BAD, files=[upload], form={"messages": "[not json"})
    yield Case("mp-messages-wrong-type", BAD, files=[upload], form={"messages": '{"a": 1}'})
    yield Case(
        "mp-prompt-and-messages",
        BAD,
        files=[upload],
        form={"prompt": "x", "messages": '[{"role": "user", "content": "x"}]'},
    )
    yield Case("mp-no-prompt-no-image", BAD, form={"model": "deepseek-r1"})
    yield Case("mp-too-many-uploads", BAD, files=[upload] * 17, form={"prompt": "x"})
    yield Case("mp-stream-wrong-type", BAD, files=[upload], form={"stream": "[1]"})


def corpus() -> list[Case]:
    return [*json_cases(), *image_cases(), *multipart_cases()]


@pytest.fixture(scope="module")
def corpus_proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    settings = proxy_settings(test_model_dir, upstream.base_url, max_body_bytes=MAX_BODY)
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def send(client: httpx.Client, case: Case) -> httpx.Response:
    if case.json_body is not None:
        return client.post(
            "/v1/chat/completions",
            content=case.json_body,
            headers={"Content-Type": "application/json"},
        )
    form = {"prompt": "what is this?"} if case.form is None else case.form
    return client.post("/v1/chat/completions", data=form, files=case.files or None)


def test_corpus_is_big_enough() -> None:
    cases = corpus()
    assert len(cases) >= 200
    assert len({case.name for case in cases}) == len(cases)


def test_bad_input_corpus(corpus_proxy: ProxyServer) -> None:
    wrong = []
    with httpx.Client(base_url=corpus_proxy.url, timeout=30) as client:
        for case in corpus():
            response = send(client, case)
            status = response.status_code
            if case.expect == OK:
                if status != 200:
                    wrong.append((case.name, status, response.text[:200]))
                continue
            if case.expect == EITHER and status == 200:
                continue
            if not 400 <= status < 500:
                wrong.append((case.name, status, response.text[:200]))
                continue
            error = response.json().get("error")
            if not (isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}):
                wrong.append((case.name, status, "not OpenAI's error shape"))
        assert not wrong, "\n".join(map(str, wrong))
        good = client.post(
            "/v1/chat/completions",
            content=chat_with(as_data_url(encode(photo(), "PNG"))),
            headers={"Content-Type": "application/json"},
        )
        assert good.status_code == 200
        assert good.json()["choices"][0]["message"]["content"] == "A cat on a sofa."
