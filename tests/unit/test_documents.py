"""The document core without a server: page ranges, text repair, the usable-layer test, and
PDFium's extraction bounded in pixels (real PDFs from tests/pdfs.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.documents.extract import RenderLimits, extract_pdf, repair_text, usable
from app.documents.pages import describe_ranges, parse_pages, select_pages
from app.prompt.documents import DocumentTemplates, DocumentWords, PageWords, render_documents
from tests import pdfs


def test_page_ranges() -> None:
    assert parse_pages("1-5, 9") == ((1, 5), (9, 9))
    assert select_pages(12, parse_pages("1-3,9,11-"), max_pages=100) == ([1, 2, 3, 9, 11, 12], [])
    assert select_pages(12, None, max_pages=5) == ([1, 2, 3, 4, 5], [6, 12])
    assert describe_ranges([6, 12, 15, 15]) == "6-12,15"
    for bad in ("", "0", "5-2", "a", "1-2-3", ",".join(["1"] * 65)):
        with pytest.raises(ValueError):
            parse_pages(bad)


def test_ligatures_and_hyphenation_are_repaired() -> None:
    raw = "The \ufb01nancial o\ufb03ce\r\nsigned the agree-\r\nment; the Anglo-\r\nSaxon term"
    assert repair_text(raw) == (
        "The financial office\nsigned the agreement; the Anglo-\nSaxon term"
    )


def test_a_layer_of_private_use_or_replacement_characters_is_not_usable() -> None:
    assert usable("An ordinary line of text")
    assert usable("本合同双方同意以下条款")
    assert not usable("  \n ")
    assert not usable("\ue001\ue002\ue003 ab")
    assert not usable("\ufffd\ufffd\ufffd\ufffd x")


def test_ligatures_in_a_real_pdf_reach_the_text() -> None:
    data = pdfs.typeset_pdf(["The \ufb01nancial o\ufb03ce", "signed the agree-", "ment today"])

    [page] = extract_pdf(data, None, 10, RenderLimits()).pages

    assert "financial office" in page.text
    assert "agreement today" in page.text


def test_a_broken_text_layer_is_rendered_for_ocr() -> None:
    data = pdfs.broken_layer_pdf(pdfs.english_lines(5, seed=3))

    [page] = extract_pdf(data, None, 10, RenderLimits()).pages

    assert page.text == ""
    assert Image.open(io.BytesIO(page.image)).size == (1654, 2339)  # A4 at 200 DPI


def test_a_200_inch_page_is_rendered_within_the_pixel_cap() -> None:
    limits = RenderLimits(max_pixels=4_000_000)

    [page] = extract_pdf(pdfs.giant_page_pdf(200), None, 10, limits).pages

    width, height = Image.open(io.BytesIO(page.image)).size
    assert width * height <= 4_000_000
    assert width == height >= 1900


def test_the_char_cap_cuts_and_says_so() -> None:
    document = DocumentWords("a.txt", 0, [PageWords(1, "text", "x" * 50)])

    [block], truncated = render_documents([document], DocumentTemplates(), max_chars=20)

    assert truncated
    assert "x" * 20 + "\n[... 30 more characters left out" in block
    assert "x" * 21 not in block


def test_columns_written_across_the_page_are_read_one_after_the_other() -> None:
    data, written = pdfs.interleaved_columns_pdf(seed=9)

    [page] = extract_pdf(data, None, 10, RenderLimits()).pages

    assert pdfs.cer(page.text, written) <= 0.01
    assert page.text.startswith("Quarterly agreement review\n")


def test_a_table_is_read_row_by_row() -> None:
    data, written = pdfs.table_pdf()

    [page] = extract_pdf(data, None, 10, RenderLimits()).pages

    assert pdfs.cer(page.text, written) <= 0.01


def test_the_reader_process_gets_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import os

    from app.documents import worker

    monkeypatch.setenv("CLIP_PROXY_UPSTREAM_API_KEY", "sk-never-in-the-reader")
    seen: dict[str, object] = {}
    real = asyncio.create_subprocess_exec

    async def spy(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        seen.update(kwargs)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    data, written = pdfs.english_pdf(pages=1, lines=2)
    workers = worker.ExtractionWorkers(workers=1, memory_bytes=1024 * 1024 * 1024)

    result = asyncio.run(workers.extract(data, None, 5, RenderLimits()))

    assert pdfs.cer(result.pages[0].text, written[0]) == 0
    env = seen["env"]
    assert isinstance(env, dict)
    assert "CLIP_PROXY_UPSTREAM_API_KEY" not in env
    assert env["PATH"] == os.environ["PATH"]
