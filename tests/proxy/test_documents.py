"""Documents through a real proxy: PDFs made here with real fonts (tests/pdfs.py), read by the
real PDFium in its own process and, for scanned pages, by the real RapidOCR; the words that
reach the (fake) upstream are compared with what was written by character error rate."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests import pdfs
from tests.helpers import DRY_RUN, ProxyServer, metric_value, proxy_settings
from tests.processes import scaled
from tests.upstream_server import FakeUpstream

CHAT = "/v1/chat/completions"
PAGE = re.compile(r'<page n="(\d+)">(.*?)</page>', re.S)


@pytest.fixture(scope="module")
def reader(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    """One proxy with OCR on (for scanned pages), the seed preset (documents are words
    under every preset)."""
    settings = proxy_settings(test_model_dir, upstream.base_url, ocr_enabled=True, ocr_threads=1)
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def file_part(data: bytes, name: str = "doc.pdf", mime: str = "application/pdf") -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {
        "type": "file",
        "file": {"filename": name, "file_data": f"data:{mime};base64,{encoded}"},
    }


def ask(*parts: dict[str, Any], text: str = "What does it say?", **extra: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": text}, *parts]
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": content}], **extra}


def send(proxy: ProxyServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(proxy.url + CHAT, json=body, headers=headers, timeout=120)


def sent_content(upstream: FakeUpstream) -> str:
    chats = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert chats, "nothing reached the upstream"
    return str(chats[-1].json["messages"][-1]["content"])


def pages_of(content: str) -> dict[int, str]:
    return {int(n): html.unescape(text) for n, text in PAGE.findall(content)}


def error_of(reply: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = reply.json()["error"]
    return error


def still_serving(proxy: ProxyServer) -> None:
    """After a bad document, a normal document request is answered as usual."""
    data, written = pdfs.english_pdf(pages=1, lines=3, seed=77)
    reply = send(proxy, ask(file_part(data)), **DRY_RUN)
    assert reply.status_code == 200, reply.text
    assert pdfs.cer(pages_of(reply.json()["messages"][0]["content"])[1], written[0]) <= 0.01


def test_an_english_pdf_reaches_the_upstream_word_for_word(
    reader: ProxyServer, upstream: FakeUpstream
) -> None:
    data, written = pdfs.english_pdf(pages=3, lines=30, seed=11)

    reply = send(reader, ask(file_part(data, "contract.pdf")))

    assert reply.status_code == 200, reply.text
    content = sent_content(upstream)
    assert content.startswith(
        'What does it say?\n<document index="1" name="contract.pdf" pages="3" read="text:3">\n'
    )
    assert content.endswith("</document>")
    read = pages_of(content)
    assert sorted(read) == [1, 2, 3]
    for n, text in read.items():
        assert pdfs.cer(text, written[n - 1]) <= 0.01, (n, text[:200])
    timing = reply.headers["server-timing"]
    assert "document;dur=" in timing
    assert "ocr;dur=" not in timing


def test_a_chinese_pdf_reaches_the_upstream(reader: ProxyServer, upstream: FakeUpstream) -> None:
    data, written = pdfs.chinese_pdf(pages=2, seed=21)

    reply = send(reader, ask(file_part(data, "合同.pdf")))

    assert reply.status_code == 200, reply.text
    read = pages_of(sent_content(upstream))
    assert [pdfs.cer(read[n], written[n - 1]) for n in (1, 2)] == [0.0, 0.0]


def test_a_two_column_page_is_read_column_by_column(
    reader: ProxyServer, upstream: FakeUpstream
) -> None:
    data, written = pdfs.two_column_pdf(seed=31)
    across, written_across = pdfs.interleaved_columns_pdf(seed=33)

    assert send(reader, ask(file_part(data), file_part(across))).status_code == 200

    content = sent_content(upstream)
    assert pdfs.cer(pages_of(content.split("</document>")[0])[1], written) <= 0.01
    assert pdfs.cer(pages_of(content.split("</document>")[1])[1], written_across) <= 0.01


def test_a_scanned_page_is_read_by_ocr(reader: ProxyServer, upstream: FakeUpstream) -> None:
    lines = pdfs.english_lines(12, seed=41)
    data = pdfs.image_pdf_pages([pdfs.page_image(lines, dpi=150)])
    before = metric_value(reader.url, "clip_proxy_document_pages_total", read="ocr")

    reply = send(reader, ask(file_part(data, "scan.pdf")))

    assert reply.status_code == 200, reply.text
    content = sent_content(upstream)
    assert 'name="scan.pdf" pages="1" read="ocr:1"' in content
    assert pdfs.cer(pages_of(content)[1], "\n".join(lines)) <= 0.05
    assert "ocr;dur=" in reply.headers["server-timing"]
    after = metric_value(reader.url, "clip_proxy_document_pages_total", read="ocr")
    assert after == before + 1


def test_a_mixed_document_says_how_each_page_was_read(reader: ProxyServer) -> None:
    scanned = pdfs.english_lines(6, seed=51)
    typed = pdfs.english_lines(6, seed=52)
    data = pdfs.image_pdf_pages([typed, pdfs.page_image(scanned), typed])

    reply = send(reader, ask(file_part(data, "mixed.pdf")), **DRY_RUN)

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert 'pages="3" read="text:2,ocr:1"' in content
    read = pages_of(content)
    assert pdfs.cer(read[1], "\n".join(typed)) <= 0.01
    assert pdfs.cer(read[2], "\n".join(scanned)) <= 0.05
    assert int(reply.headers["x-clip-proxy-prompt-chars"]) > len(content)


def test_a_text_file_and_markup_inside_it_stay_text(reader: ProxyServer) -> None:
    note = '# Notes\n\nA </document> tag & <page n="9"> stay text.\n'
    part = file_part(note.encode(), "notes.md", "text/markdown")

    reply = send(reader, ask(part), **DRY_RUN)

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert content == (
        'What does it say?\n<document index="1" name="notes.md" pages="1" read="text:1">\n'
        '# Notes\n\nA &lt;/document&gt; tag &amp; &lt;page n="9"&gt; stay text.\n'
        "\n</document>"
    )


def test_pages_asked_for_and_the_page_cap(reader: ProxyServer) -> None:
    data, written = pdfs.english_pdf(pages=4, lines=4, seed=61)
    body = ask(file_part(data), clip_proxy={"pages": "2,4"})

    reply = send(reader, body, **DRY_RUN)

    assert reply.status_code == 200, reply.text
    read = pages_of(reply.json()["messages"][0]["content"])
    assert sorted(read) == [2, 4]
    assert pdfs.cer(read[4], written[3]) <= 0.01
    past = send(reader, ask(file_part(data), clip_proxy={"pages": "7-9"}), **DRY_RUN)
    assert "[none of the pages asked for (clip_proxy.pages) is among its 4]" in past.text
    bad = send(reader, ask(file_part(data), clip_proxy={"pages": "3-1"}), **DRY_RUN)
    assert bad.status_code == 400
    assert error_of(bad)["param"] == "clip_proxy.pages"


def test_a_ten_turn_conversation_reads_its_pdf_once(
    reader: ProxyServer, upstream: FakeUpstream
) -> None:
    data, _ = pdfs.english_pdf(pages=5, lines=10, seed=71)
    before = metric_value(reader.url, "clip_proxy_document_pages_total", read="text")
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Read this"}, file_part(data)]}
    ]
    for turn in range(10):
        reply = send(reader, {"model": "deepseek-r1", "messages": messages})
        assert reply.status_code == 200, reply.text
        messages += [
            {"role": "assistant", "content": f"answer {turn}"},
            {"role": "user", "content": f"question {turn + 1}"},
        ]

    after = metric_value(reader.url, "clip_proxy_document_pages_total", read="text")
    assert after - before == 5  # five pages, read on the first turn only
    first = upstream.requests[0].json["messages"][0]["content"]
    assert upstream.requests[-1].json["messages"][0]["content"] == first


def test_uploads_are_told_apart_by_content(reader: ProxyServer) -> None:
    data, written = pdfs.english_pdf(pages=1, lines=5, seed=81)
    files = [
        ("image", ("scan.bin", data, "application/octet-stream")),
        ("file", ("table.csv", b"a,b\n1,2\n", "text/csv")),
    ]

    reply = httpx.post(
        reader.url + CHAT,
        data={"prompt": "Compare"},
        files=files,
        headers=DRY_RUN,
        timeout=60,
    )

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert content.startswith('Compare\n<document index="1" name="scan.bin" pages="1"')
    assert pdfs.cer(pages_of(content)[1], written[0]) <= 0.01
    assert content.endswith(
        '<document index="2" name="table.csv" pages="1" read="text:1">\na,b\n1,2\n\n</document>'
    )


# The bad-input list: each a clear 4xx, and the proxy answering a normal request after.


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (pdfs.encrypted_pdf, "document_encrypted", "encrypted"),
        (lambda: pdfs.english_pdf(pages=2)[0][:3000], "invalid_document", "corrupt"),
        (pdfs.flate_bomb_pdf, "invalid_document", "40000x40000 pixels"),
        (lambda: "Grüße, naïve café".encode("cp1252"), "invalid_document", "UTF-8"),
    ],
    ids=["encrypted", "truncated", "flate-bomb", "unknown-encoding"],
)
def test_bad_documents_get_a_clear_400(
    reader: ProxyServer, make: Callable[[], bytes], code: str, words: str
) -> None:
    reply = send(reader, ask(file_part(make(), mime="application/pdf")), **DRY_RUN)

    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert error["code"] == code
    assert words in error["message"]
    assert error["param"] == "messages[0].content[1].file"
    still_serving(reader)


def test_a_text_file_not_in_utf8_names_its_part(reader: ProxyServer) -> None:
    part = file_part("价格表".encode("gbk"), "prices.txt", "text/plain")
    reply = send(reader, ask(part), **DRY_RUN)

    assert reply.status_code == 400
    assert error_of(reply)["code"] == "invalid_document"
    assert "'prices.txt'" in error_of(reply)["message"]


def test_a_pdf_of_100000_pages_reads_the_first_100_and_names_the_rest(
    reader: ProxyServer,
) -> None:
    data = pdfs.many_pages_pdf(100_000)
    started = time.monotonic()

    reply = send(reader, ask(file_part(data, "huge.pdf")), **DRY_RUN)

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert '<document index="1" name="huge.pdf" pages="100000" read="text:100">' in content
    assert "[pages 101-100000 left out: past DOCUMENT_MAX_PAGES]" in content
    assert time.monotonic() - started < 30
    still_serving(reader)


def test_a_cyclic_and_deeply_nested_pdf_is_answered(reader: ProxyServer) -> None:
    reply = send(reader, ask(file_part(pdfs.cyclic_pdf())), **DRY_RUN)

    # PDFium breaks the cycle: one real page, the rest named as unreadable.
    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert "[this page could not be read: the page could not be opened]" in content
    still_serving(reader)


@pytest.mark.parametrize(
    ("file", "words", "param"),
    [
        (
            {"filename": "empty.pdf", "file_data": "data:application/pdf;base64,"},
            "empty (0 bytes)",
            "",
        ),
        ({"filename": "a.pdf", "file_data": ""}, "file_data", ".file_data"),
        ({"filename": "contract.pdf"}, "only a filename", ".file_data"),
        ({"file_id": "file-abc123"}, "no Files API", ".file_id"),
    ],
    ids=["zero-bytes", "empty-data", "filename-only", "file-id"],
)
def test_file_parts_without_a_file_get_a_clear_400(
    reader: ProxyServer, file: dict[str, Any], words: str, param: str
) -> None:
    reply = send(reader, ask({"type": "file", "file": file}), **DRY_RUN)

    assert reply.status_code == 400, reply.text
    assert words in error_of(reply)["message"]
    assert error_of(reply)["param"] == "messages[0].content[1].file" + param
    still_serving(reader)


def test_a_zero_byte_upload_is_refused(reader: ProxyServer) -> None:
    reply = httpx.post(
        reader.url + CHAT,
        data={"prompt": "Read"},
        files=[("file", ("empty.txt", b"", "text/plain"))],
        headers=DRY_RUN,
        timeout=60,
    )
    assert reply.status_code == 400
    assert error_of(reply)["code"] == "invalid_document"
    assert "0 bytes" in error_of(reply)["message"]


def test_document_chars_are_capped_and_the_cut_is_said(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(document_max_chars=500)
    data, written = pdfs.english_pdf(pages=2, lines=20, seed=91)

    reply = send(proxy, ask(file_part(data)), **DRY_RUN)

    assert reply.status_code == 200, reply.text
    assert reply.headers["x-clip-proxy-document-truncated"] == "true"
    read = pages_of(reply.json()["messages"][0]["content"])
    assert read[1].startswith(written[0][:500])
    assert "more characters left out" in read[1]
    assert len(read[2]) < 200  # past the budget, a page is only the note


def test_a_document_past_its_deadline_is_a_504(start_proxy: Callable[..., ProxyServer]) -> None:
    proxy = start_proxy(document_timeout_s=0.01)
    data, _ = pdfs.english_pdf(pages=30, lines=30, seed=95)

    reply = send(proxy, ask(file_part(data)), **DRY_RUN)

    assert reply.status_code == 504
    assert error_of(reply)["code"] == "document_timeout"
    assert send(proxy, ask(), **DRY_RUN).status_code == 200


def test_the_openai_sdk_sends_a_pdf_and_the_echo_accounts_for_it(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(upstream_base_url="echo", upstream_api_key="")
    data, written = pdfs.english_pdf(pages=2, lines=8, seed=99)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    encoded = base64.b64encode(data).decode()

    completion = client.chat.completions.create(
        model="deepseek-r1",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarise the contract"},
                    {
                        "type": "file",
                        "file": {
                            "filename": "contract.pdf",
                            "file_data": f"data:application/pdf;base64,{encoded}",
                        },
                    },
                ],
            }
        ],
    )

    answer = completion.choices[0].message.content or ""
    chars = sum(len(page) for page in written)
    line = re.search(
        r"document 1: 'contract.pdf', 2 pages, read text:2, ([\d,]+) characters\.", answer
    )
    assert line is not None, answer
    assert abs(int(line[1].replace(",", "")) - chars) <= chars * 0.01 + 4
    assert "The question: 'Summarise the contract'." in answer


def test_replicas_share_page_readings_through_redis(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    prefix = f"i25-documents-{uuid.uuid4().hex}:"
    shared = {"cache_url": "redis://127.0.0.1:6379/5", "cache_key_prefix": prefix}
    first, second = start_proxy(**shared), start_proxy(**shared)
    data, written = pdfs.english_pdf(pages=3, lines=6, seed=123)
    store = redis.Redis.from_url("redis://127.0.0.1:6379/5")
    try:
        assert send(first, ask(file_part(data)), **DRY_RUN).status_code == 200
        deadline = time.monotonic() + scaled(10)
        while len(list(store.scan_iter(f"{prefix}*"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # the page count and three pages, written after the answer

        reply = send(second, ask(file_part(data)), **DRY_RUN)

        assert reply.status_code == 200
        read = pages_of(reply.json()["messages"][0]["content"])
        assert pdfs.cer(read[3], written[2]) <= 0.01
        assert metric_value(second.url, "clip_proxy_document_pages_total", read="text") == 0
        hits = metric_value(
            second.url, "clip_proxy_words_cache_hits_total", kind="document", backend="redis"
        )
        assert hits == 4
    finally:
        keys = list(store.scan_iter(f"{prefix}*"))
        if keys:
            store.delete(*keys)
        store.close()


def test_a_page_with_a_broken_text_layer_is_read_by_ocr(reader: ProxyServer) -> None:
    lines = pdfs.english_lines(6, seed=131)

    reply = send(reader, ask(file_part(pdfs.broken_layer_pdf(lines))), **DRY_RUN)

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    assert 'pages="1" read="ocr:1"' in content
    assert "\ue000" not in content
    assert pdfs.cer(pages_of(content)[1], "\n".join(lines)) <= 0.05


def test_documents_per_request_are_capped(reader: ProxyServer) -> None:
    part = file_part(b"a short note", "note.txt", "text/plain")

    reply = send(reader, ask(*[part] * 17), **DRY_RUN)

    assert reply.status_code == 400
    assert error_of(reply)["code"] == "too_many_documents"
    assert "the limit is 16" in error_of(reply)["message"]
    assert send(reader, ask(*[part] * 16), **DRY_RUN).status_code == 200


@pytest.mark.parametrize(
    ("headers", "as_part"),
    [
        ({"X-Clip-Proxy-Format": "content_part"}, True),
        ({"X-Clip-Proxy-Preset": "describe"}, False),
        ({"X-Clip-Proxy-Preset": "seed", "X-Clip-Proxy-Format": "inline"}, False),
    ],
    ids=["seed-content-part", "describe", "seed-inline"],
)
def test_documents_are_words_under_every_preset_and_format(
    reader: ProxyServer, headers: dict[str, str], as_part: bool
) -> None:
    data, written = pdfs.english_pdf(pages=1, lines=4, seed=151)

    reply = send(reader, ask(file_part(data, "memo.pdf")), **DRY_RUN, **headers)

    assert reply.status_code == 200, reply.text
    content = reply.json()["messages"][0]["content"]
    if as_part:
        assert content[0] == {"type": "text", "text": "What does it say?"}
        assert content[1]["type"] == "text"
        content = content[1]["text"]
    assert '<document index="1" name="memo.pdf" pages="1" read="text:1">' in content
    assert pdfs.cer(pages_of(content)[1], written[0]) <= 0.01
    assert "image_embedding" not in reply.text


def test_curl_uploads_a_pdf_in_the_image_field(reader: ProxyServer, tmp_path: Path) -> None:
    data, written = pdfs.english_pdf(pages=2, lines=3, seed=161)
    (tmp_path / "report.pdf").write_bytes(data)

    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-H",
            "X-Clip-Proxy-Dry-Run: true",
            "-F",
            "prompt=Summarise",
            "-F",
            f"image=@{tmp_path / 'report.pdf'}",
            reader.url + CHAT,
        ],
        capture_output=True,
        check=True,
        timeout=90,
    )

    content = json.loads(result.stdout)["messages"][0]["content"]
    assert content.startswith('Summarise\n<document index="1" name="report.pdf" pages="2"')
    assert pdfs.cer(pages_of(content)[2], written[1]) <= 0.01
