"""PDFs made for the tests (and bench/documents.py) with real fonts, and the character error
rate that compares what the proxy read with what was written.

    data, written = english_pdf(pages=3)       # bytes, and each page's text
    cer(read, written)                         # 0.0 .. 1.0 (Levenshtein / len(written))
"""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
NOTO_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")

_WORDS = [
    "the",
    "contract",
    "between",
    "parties",
    "shall",
    "remain",
    "in",
    "force",
    "until",
    "terminated",
    "by",
    "written",
    "notice",
    "payment",
    "invoice",
    "amount",
    "due",
    "within",
    "thirty",
    "days",
    "of",
    "receipt",
    "delivery",
    "goods",
    "services",
    "warranty",
    "liability",
    "limited",
    "damages",
    "clause",
    "section",
    "agreement",
    "governing",
    "law",
    "jurisdiction",
    "court",
    "confidential",
    "information",
    "disclosed",
    "party",
    "receiving",
    "obligations",
    "term",
    "renewal",
    "annual",
]
_HANZI = (
    "本合同双方同意以下条款付款应在收到发票后三十日内完成货物交付服务保证责任限制损害赔偿"
    "保密信息披露接收方义务期限续签年度管辖法律法院争议解决通知书面形式终止生效日期签署"
)


def _register_fonts() -> None:
    if "DejaVu" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("DejaVu", str(DEJAVU)))
        # reportlab embeds TrueType outlines only (Noto CJK's are CFF): Chinese text layers use
        # Adobe's STSong-Light CID font (UniGB-UCS2-H); scanned Chinese pages draw Noto CJK.
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))


def english_lines(count: int, seed: int, width: int = 70) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        line = ""
        while True:
            word = rng.choice(_WORDS)
            if len(line) + len(word) + 1 > width:
                break
            line = f"{line} {word}" if line else word
        lines.append(line.capitalize())
    return lines


def chinese_lines(count: int, seed: int, width: int = 30) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_HANZI) for _ in range(width)) for _ in range(count)]


def text_pdf(pages: list[list[str]], *, font: str = "DejaVu", size: int = 11) -> bytes:
    """One line of text per entry, top to bottom, one page per list."""
    _register_fonts()
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    for lines in pages:
        page.setFont(font, size)
        y = A4[1] - 60
        for line in lines:
            page.drawString(50, y, line)
            y -= size * 1.6
        page.showPage()
    page.save()
    return out.getvalue()


def english_pdf(pages: int = 3, lines: int = 30, seed: int = 1) -> tuple[bytes, list[str]]:
    written = [english_lines(lines, seed + n) for n in range(pages)]
    return text_pdf(written), ["\n".join(page) for page in written]


def chinese_pdf(pages: int = 2, lines: int = 25, seed: int = 1) -> tuple[bytes, list[str]]:
    written = [chinese_lines(lines, seed + n) for n in range(pages)]
    return text_pdf(written, font="STSong-Light", size=12), ["\n".join(page) for page in written]


def two_column_pdf(seed: int = 5) -> tuple[bytes, str]:
    """Left column first, then the right one, lines side by side on the page."""
    _register_fonts()
    left, right = english_lines(20, seed, width=32), english_lines(20, seed + 1, width=32)
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    page.setFont("DejaVu", 10)
    for column, x in ((left, 50), (right, 310)):
        text = page.beginText(x, A4[1] - 60)
        text.setLeading(15)
        for line in column:
            text.textLine(line)
        page.drawText(text)
    page.showPage()
    page.save()
    return out.getvalue(), "\n".join(left + right)


def page_image(
    lines: list[str], *, cjk: bool = False, dpi: int = 150, size_pt: int = 12
) -> Image.Image:
    """An A4 'scan' at `dpi`: the lines drawn in black on white."""
    width, height = int(8.27 * dpi), int(11.69 * dpi)
    picture = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(picture)
    size = int(size_pt * dpi / 72)
    face = (
        ImageFont.truetype(str(NOTO_CJK), size, index=2)  # Noto Sans CJK SC
        if cjk
        else ImageFont.truetype(str(DEJAVU), size)
    )
    y = int(0.8 * dpi)
    for line in lines:
        draw.text((int(0.7 * dpi), y), line, fill=0, font=face)
        y += int(size_pt * 1.8 * dpi / 72)
    return picture


def image_pdf_pages(pictures: list[Image.Image | list[str]]) -> bytes:
    """Pages that are pictures (no text layer), or text lines (a text layer) for mixed ones."""
    _register_fonts()
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    for item in pictures:
        if isinstance(item, Image.Image):
            page.drawImage(ImageReader(item), 0, 0, width=A4[0], height=A4[1])
        else:
            page.setFont("DejaVu", 11)
            y = A4[1] - 60
            for line in item:
                page.drawString(50, y, line)
                y -= 17
        page.showPage()
    page.save()
    return out.getvalue()


def encrypted_pdf() -> bytes:
    _register_fonts()
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4, encrypt="secret")
    page.setFont("DejaVu", 11)
    page.drawString(50, 700, "Top secret text")
    page.showPage()
    page.save()
    return out.getvalue()


def raw_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF from its objects' bodies (object i+1 is objects[i]), with a correct xref."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref,
    )
    return bytes(out)


def many_pages_pdf(count: int) -> bytes:
    """`count` empty pages, each its own object (a real page tree, not a claim)."""
    kids = b" ".join(b"%d 0 R" % (number + 3) for number in range(count))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    objects.append(b"<< /Type /Pages /Count %d /Kids [%s] >>" % (count, kids))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"
    objects += [page] * count
    return raw_pdf(objects)


def cyclic_pdf() -> bytes:
    """A page tree whose node is its own kid, and a page dictionary nested 5000 deep."""
    deep = b"[" * 5000 + b"]" * 5000
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Count 3 /Kids [2 0 R 3 0 R 2 0 R] >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Junk " + deep + b" >>",
        ]
    )


def flate_bomb_pdf(side: int = 40_000) -> bytes:
    """A page whose only content is a `side` x `side` grey image of zeros, Flate-compressed:
    a few hundred KiB that would decode to `side`**2 bytes."""
    squeezer = zlib.compressobj(9)
    row_block = bytes(side * 256)
    body = bytearray()
    for _ in range(side // 256):
        body += squeezer.compress(row_block)
    body += squeezer.flush()
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n"
        % (side, side, len(body))
        + bytes(body)
        + b"\nendstream"
    )
    content = b"q 595 0 0 842 0 0 cm /Im0 Do Q"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>",
            image,
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        ]
    )


def cer(read: str, written: str) -> float:
    """Character error rate: edit distance over the written text's length, whitespace
    runs folded to one space on both sides."""
    a, b = " ".join(read.split()), " ".join(written.split())
    if not b:
        return 0.0 if not a else 1.0
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            current[j] = min(
                previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)
            )
        previous = current
    return previous[-1] / len(b)


def typeset_pdf(lines: list[str]) -> bytes:
    """One page, DejaVu Sans: ligature characters and hyphens kept as written."""
    return text_pdf([lines])


def broken_layer_pdf(lines: list[str]) -> bytes:
    """A page that shows `lines` as a picture under an invisible text layer of private-use
    characters: what a CJK font without a usable ToUnicode map gives a text extractor."""
    _register_fonts()
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    page.drawImage(ImageReader(page_image(lines)), 0, 0, width=A4[0], height=A4[1])
    text = page.beginText(50, A4[1] - 60)
    text.setFont("DejaVu", 11)
    text.setTextRenderMode(3)  # invisible, as OCR'd or broken layers are
    for line in lines:
        text.textLine("".join(chr(0xE000 + (ord(char) % 2000)) for char in line))
    page.drawText(text)
    page.showPage()
    page.save()
    return out.getvalue()


def giant_page_pdf(inches: int = 200) -> bytes:
    """One `inches` x `inches` page (PDF's largest) holding a small picture, no text."""
    side = inches * 72
    picture = Image.new("L", (64, 64), 128)
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=(side, side))
    page.drawImage(ImageReader(picture), 0, 0, width=side, height=side)
    page.showPage()
    page.save()
    return out.getvalue()


def interleaved_columns_pdf(seed: int = 7) -> tuple[bytes, str]:
    """Two columns written line by line across the page (left line, right line, ...): the
    content order is not the reading order. A title spans both columns above them."""
    _register_fonts()
    title = "Quarterly agreement review"
    left, right = english_lines(18, seed, width=32), english_lines(18, seed + 1, width=32)
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    page.setFont("DejaVu", 14)
    page.drawString(50, A4[1] - 50, title)
    page.setFont("DejaVu", 10)
    y = A4[1] - 90
    for left_line, right_line in zip(left, right, strict=True):
        page.drawString(50, y, left_line)
        page.drawString(310, y, right_line)
        y -= 15
    page.showPage()
    page.save()
    return out.getvalue(), "\n".join([title, *left, *right])


def table_pdf(rows: int = 8) -> tuple[bytes, str]:
    """A three-column table of short cells, written row by row: rows must stay rows."""
    _register_fonts()
    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    page.setFont("DejaVu", 10)
    written = []
    y = A4[1] - 60
    for row in range(rows):
        cells = [f"item {row}", f"{row * 7} kg", f"due day {row + 3}"]
        for x, cell in zip((50, 250, 450), cells, strict=True):
            page.drawString(x, y, cell)
        written.append(" ".join(cells))
        y -= 15
    page.showPage()
    page.save()
    return out.getvalue(), "\n".join(written)
