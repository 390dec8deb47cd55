"""What the upstream reads for a code screenshot, a two-column page and a table under the
describe preset, through a real proxy with real OCR (`OCR_LAYOUT=layout`, the default):
indentation kept line by line, columns one after the other, cells separated by ` | `; and
`OCR_LAYOUT=plain`, the reading before."""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.helpers import ProxyServer, data_url, image_message, proxy_settings
from tests.upstream_server import FakeUpstream

MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
OCR = {"ocr_enabled": True, "ocr_threads": 1, "prompt_preset": "describe"}
CODE = [
    "class Cache:",
    "    def get(self, key):",
    "        if key in self.items:",
    "            return self.items[key]",
    "        return None",
]
LEFT = ["The new release brings", "faster start-up times", "and a smaller memory"]
RIGHT = ["Upgrading is simple:", "stop the service, install", "the package again."]
TABLE = [["Host", "Port", "Status"], ["db-1", "5432", "up"], ["cache", "6379", "down"]]


def draw_rows(rows: list[list[str]], font_path: str, gutter: float = 0.0, px: int = 20) -> bytes:
    """Rows of cells, each column left-aligned, `gutter` text heights apart; a PNG."""
    font = ImageFont.truetype(font_path, px)
    widths = [max(int(font.getlength(row[c])) for row in rows) for c in range(len(rows[0]))]
    margin, step = px, int(px * 1.5)
    starts = [margin + sum(widths[:c]) + int(c * gutter * px) for c in range(len(widths))]
    image = Image.new("RGB", (starts[-1] + widths[-1] + margin, step * len(rows) + 2 * margin))
    image.paste("white", (0, 0, *image.size))
    draw = ImageDraw.Draw(image)
    for number, row in enumerate(rows):
        for start, cell in zip(starts, row, strict=True):
            draw.text((start, margin + number * step), cell, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reading(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    server = ProxyServer(proxy_settings(test_model_dir, upstream.base_url, **OCR)).start()
    yield server
    server.stop()


def read_upstream(proxy: ProxyServer, upstream: FakeUpstream, png: bytes) -> list[str]:
    """The OCR text the upstream received for one image, line by line."""
    body = {"model": "deepseek-r1", "messages": [image_message(data_url(png), "Read it.")]}
    reply = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    (sent,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    content = str(sent.json["messages"][0]["content"])
    text = content.split("Text in the image:\n", 1)[1].rsplit("\n</image>", 1)[0]
    return html.unescape(text).split("\n")


def test_code_reaches_the_upstream_with_its_indentation(
    reading: ProxyServer, upstream: FakeUpstream
) -> None:
    shot = draw_rows([[line] for line in CODE], MONO)

    assert read_upstream(reading, upstream, shot) == CODE


def test_two_columns_reach_the_upstream_one_after_the_other(
    reading: ProxyServer, upstream: FakeUpstream
) -> None:
    page = draw_rows([[a, b] for a, b in zip(LEFT, RIGHT, strict=True)], SANS, gutter=3.0)

    lines = read_upstream(reading, upstream, page)

    assert [line for line in lines if line] == LEFT + RIGHT


def test_a_table_reaches_the_upstream_row_by_row_with_cells_separated(
    reading: ProxyServer, upstream: FakeUpstream
) -> None:
    table = draw_rows(TABLE, SANS, gutter=2.5)

    assert read_upstream(reading, upstream, table) == [" | ".join(row) for row in TABLE]


def test_plain_layout_reads_lines_in_order_as_before(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(ocr_layout="plain", **OCR)
    shot = draw_rows([[line] for line in CODE], MONO)

    assert read_upstream(proxy, upstream, shot) == [line.strip() for line in CODE]
