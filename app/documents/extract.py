"""A document's bytes -> its pages as text, or as a rendered picture for OCR.

The one module that imports pypdfium2 (PDFium). It runs in a worker process
(`app.documents.worker`), never in the server: PDFium is not thread-safe, and a hostile file
can only hang, bloat or crash that process.

    result = extract_pdf(data, wanted=None, max_pages=100, render=RenderLimits())
    result.page_count, result.pages   # [Page(n=1, text="...", image=b""), ...]

Per page: the text layer (PDFium orders it as the content is laid out, column by column), with
ligatures (U+FB00..FB06) spelled out and words hyphenated at a line's end joined again. A page
whose text layer is empty or mostly replacement, private-use or control characters (a font
with no usable ToUnicode map) is rendered instead, at `dpi` capped to `max_pixels`, as a PNG
the OCR reads. Images on such a page are checked by their declared size before PDFium decodes
them: a Flate bomb cannot make it allocate gigabytes.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from app.documents.layout import ordered_text
from app.documents.pages import PageRanges, select_pages

_LIGATURES = str.maketrans(
    {
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
    }
)
# A word broken at a line's end: a hyphen (or PDFium's soft-hyphen markers U+0002 and U+FFFE)
# between two letters, the second lower case. "co-\noperate" stays two parts only when the
# writer put a hard hyphen before an upper-case letter.
_HYPHENATED = re.compile(r"(?<=[^\W\d_])[-\u00ad\u0002\ufffe]\r?\n(?=[a-z\u00e0-\u00ff])")
_BAD_CATEGORIES = frozenset({"Co", "Cc", "Cs", "Cn"})
# Past this share of unusable characters, the text layer is not read but OCR'd.
MAX_BAD_SHARE = 0.3
# A page's text is capped (the request's total is capped again later).
MAX_PAGE_CHARS = 60_000


class DocumentProblem(Exception):
    """What is wrong with the file, for the client: `code` is `invalid_document` or
    `document_encrypted`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RenderLimits:
    dpi: int = 200
    max_pixels: int = 12_000_000
    max_side: int = 10_000
    # An image on a page to be rendered that declares more pixels is not decoded.
    max_image_pixels: int = 100_000_000


@dataclass(frozen=True)
class Page:
    n: int
    text: str = ""  # the repaired text layer (when `image` is empty)
    image: bytes = b""  # a PNG to OCR, when the text layer is unusable
    note: str = ""  # why the page could not be read at all


@dataclass(frozen=True)
class Extraction:
    page_count: int
    pages: list[Page]
    left_out: list[int]  # (first, last) pairs, flat: pages past the cap
    peak_rss_kib: int = 0  # the reader process's high-water mark (set by child.py)


def is_pdf(data: bytes) -> bool:
    # The header may follow up to 1 KiB of junk (PDF 1.7, annex H.3).
    return b"%PDF-" in data[:1024]


def repair_text(text: str) -> str:
    """Ligatures spelled out, hyphenation at line ends undone, newlines plain."""
    text = _HYPHENATED.sub("", text.translate(_LIGATURES))
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u0002", "")
    return text.replace("\ufffe", "").replace("\x00", "").strip()


def usable(text: str) -> bool:
    """False for an empty text layer or one that is mostly replacement, private-use,
    control or unassigned characters."""
    chars = [char for char in text if not char.isspace()]
    if not chars:
        return False
    bad = sum(
        1 for char in chars if char == "\ufffd" or unicodedata.category(char) in _BAD_CATEGORIES
    )
    return bad / len(chars) <= MAX_BAD_SHARE


def extract_pdf(
    data: bytes, wanted: PageRanges | None, max_pages: int, render: RenderLimits
) -> Extraction:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower() or "security" in str(exc).lower():
            raise DocumentProblem(
                "document_encrypted",
                "the PDF is encrypted; send it without a password (the proxy never guesses one)",
            ) from exc
        raise DocumentProblem("invalid_document", "the PDF is corrupt or truncated") from exc
    try:
        count = len(pdf)
        if count < 1:
            raise DocumentProblem("invalid_document", "the PDF has no pages")
        chosen, left_out = select_pages(count, wanted, max_pages)
        pages = [_read_page(pdf, n, render) for n in chosen]
        return Extraction(count, pages, left_out)
    finally:
        pdf.close()


def _read_page(pdf: pdfium.PdfDocument, n: int, render: RenderLimits) -> Page:
    try:
        page = pdf[n - 1]
    except Exception:
        return Page(n, note="the page could not be opened")
    try:
        textpage = page.get_textpage()
        try:
            raw = ordered_text(textpage, page.get_width())
        finally:
            textpage.close()
        text = repair_text(raw)
        if usable(text):
            return Page(n, text=text[:MAX_PAGE_CHARS])
        if not text and pdfium_c.FPDFPage_CountObjects(page) == 0:
            return Page(n)  # a blank page: nothing to read, nothing to OCR
        return _render(page, n, render)
    finally:
        page.close()


def _render(page: pdfium.PdfPage, n: int, limits: RenderLimits) -> Page:
    width_pt, height_pt = page.get_size()
    if not (width_pt >= 1 and height_pt >= 1):
        return Page(n, note="the page has no area")
    if max(width_pt, height_pt) > 50 * min(width_pt, height_pt):
        return Page(n, note="the page is too thin to read")
    for image in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=4):
        width, height = image.get_px_size()
        if width * height > limits.max_image_pixels:
            raise DocumentProblem(
                "invalid_document",
                f"page {n} holds an image of {width}x{height} pixels, more than "
                f"{limits.max_image_pixels}",
            )
    scale = limits.dpi / 72
    scale = min(
        scale,
        math.sqrt(limits.max_pixels / (width_pt * height_pt)),
        limits.max_side / max(width_pt, height_pt),
    )
    if width_pt * scale < 16 or height_pt * scale < 16:
        return Page(n, note="the page is too small to read")
    bitmap = page.render(scale=scale, grayscale=True)
    picture = bitmap.to_pil()
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return Page(n, image=out.getvalue())


def decode_text_file(data: bytes) -> str | None:
    """UTF-8 text (a BOM dropped), or None when it is not UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text.replace("\r\n", "\n")
