"""The OCR benchmarks' corpus, rendered here (reproducible, no download), and its measures.

English and Chinese sentences (DejaVu Sans, Noto Sans CJK: Debian's fonts-dejavu-core and
fonts-noto-cjk, installed by scripts/setup.sh), code in a light editor theme (three samples,
the third at three indent depths) and error messages in a dark terminal theme (DejaVu Sans
Mono), a two-column page and a small table (DejaVu Sans); text heights 12-48 px; rotations
of -5, 0 and +5 degrees; every image saved as JPEG at quality 60.

CER is the edit distance over the reference length, after NFKC on both sides. Three figures:
`cer` ignores whitespace, `cer_spaces` counts it (runs of whitespace, newlines included, as
one space), `cer_layout` also keeps the lines and each line's leading indentation (empty
lines dropped, runs of spaces inside a line as one). A two-column page's reference is its
left column, then its right; a table's is one line per row, cells separated by ` | `.

    rows = measure(corpus(), {"new": OcrModel.load(threads=1, decode=decode)})["new"]
"""

from __future__ import annotations

import functools
import io
import statistics
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from app.engine.ocr import OcrModel

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
CJK = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
HEIGHTS = (12, 16, 20, 24, 32, 48)
ROTATIONS = (-5, 0, 5)
KINDS = ("en", "zh", "code", "error", "columns", "table")

ENGLISH = [
    "The quarterly report is due on Friday, March 14.",
    "Please restart the router and try again in five minutes.",
    "Total amount payable: $1,284.50 (tax included)",
    "Meeting moved to room 4B at 3:30 pm tomorrow.",
]
CHINESE = [
    "今天下午三点在会议室讨论项目进度",
    "请在五分钟后重新启动路由器再试一次",
    "本月电费合计一百二十八元五角",
    "数据库连接失败请检查网络设置",
]
CODE = [
    ["def parse(path: str) -> dict:", "    with open(path) as f:", "        return json.load(f)"],
    ["for (int i = 0; i < n; i++) {", "    total += values[i];", "}"],
    [
        "class Cache:",
        "    def get(self, key):",
        "        if key in self.items:",
        "            return self.items[key]",
        "        return None",
    ],
]
ERRORS = [
    ["Traceback (most recent call last):", "ConnectionRefusedError: [Errno 111] refused"],
    ["ERROR: connection refused on port 5432", "FATAL: password authentication failed"],
]
COLUMNS = [
    (
        ["The new release brings", "faster start-up times", "and a smaller memory",
         "footprint overall."],
        ["Upgrading is simple:", "stop the service, install", "the package and start",
         "it again as before."],
    ),
    (
        ["Our office will close", "early on Friday for the", "annual staff meeting",
         "in the main hall."],
        ["Urgent requests can be", "sent to the support desk,", "which stays open until",
         "six in the evening."],
    ),
]  # fmt: skip
TABLES = [
    [["Item", "Qty", "Price"], ["apple", "3", "1.20"], ["bread", "1", "2.50"],
     ["milk", "2", "0.99"]],
    [["Host", "Port", "Status"], ["db-1", "5432", "up"], ["cache", "6379", "down"],
     ["web", "443", "up"]],
]  # fmt: skip


@dataclass(frozen=True)
class Sample:
    kind: str  # one of KINDS
    height: int
    rotation: int
    text: str  # the reference, lines joined by "\n"
    jpeg: bytes


def canvas(size: tuple[int, int], dark: bool) -> tuple[Image.Image, ImageDraw.ImageDraw, Any]:
    background, ink = ((30, 30, 30), (220, 220, 220)) if dark else ((255, 255, 255), (0, 0, 0))
    image = Image.new("RGB", size, background)
    return image, ImageDraw.Draw(image), ink


def render(lines: list[str], font_path: str, height: int, dark: bool) -> Image.Image:
    font = ImageFont.truetype(font_path, height)
    widths = [int(font.getlength(line)) for line in lines]
    margin = max(height, 12)
    step = int(height * 1.5)
    size = (max(widths) + 2 * margin, step * len(lines) + 2 * margin)
    image, draw, ink = canvas(size, dark)
    for number, line in enumerate(lines):
        draw.text((margin, margin + number * step), line, fill=ink, font=font)
    return image


def render_grid(cells: list[list[str]], height: int, gutter: float) -> Image.Image:
    """Rows of cells in left-aligned columns `gutter` text heights apart (DejaVu Sans)."""
    font = ImageFont.truetype(DEJAVU, height)
    widths = [max(int(font.getlength(row[c])) for row in cells) for c in range(len(cells[0]))]
    margin, step, gap = max(height, 12), int(height * 1.5), int(gutter * height)
    starts = [margin + sum(widths[:c]) + c * gap for c in range(len(widths))]
    size = (starts[-1] + widths[-1] + margin, step * len(cells) + 2 * margin)
    image, draw, ink = canvas(size, dark=False)
    for number, row in enumerate(cells):
        for start, cell in zip(starts, row, strict=True):
            draw.text((start, margin + number * step), cell, fill=ink, font=font)
    return image


def to_jpeg(image: Image.Image, rotation: int, dark: bool) -> bytes:
    if rotation:
        fill = (30, 30, 30) if dark else (255, 255, 255)
        image = image.rotate(
            rotation, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def corpus() -> list[Sample]:
    Draw = Callable[[int], Image.Image]  # a height in, the image out
    texts: dict[str, list[tuple[str, Draw, bool]]] = {
        "en": [(t, functools.partial(render, [t], DEJAVU, dark=False), False) for t in ENGLISH],
        "zh": [(t, functools.partial(render, [t], CJK, dark=False), False) for t in CHINESE],
        "code": [("\n".join(c), functools.partial(render, c, MONO, dark=False), False)
                 for c in CODE],
        "error": [("\n".join(e), functools.partial(render, e, MONO, dark=True), True)
                  for e in ERRORS],
        "columns": [
            ("\n".join([*left, *right]), functools.partial(
                render_grid, [list(pair) for pair in zip(left, right, strict=True)], gutter=3.0),
             False)
            for left, right in COLUMNS
        ],
        "table": [
            ("\n".join(" | ".join(row) for row in t), functools.partial(render_grid, t, gutter=2.5),
             False)
            for t in TABLES
        ],
    }  # fmt: skip
    samples = []
    for kind in KINDS:
        for height in HEIGHTS:
            for rotation in ROTATIONS:
                # One text per cell, rotating through the list, keeps the corpus small.
                options = texts[kind]
                text, draw, dark = options[
                    (HEIGHTS.index(height) + ROTATIONS.index(rotation)) % len(options)
                ]
                jpeg = to_jpeg(draw(height), rotation, dark)
                samples.append(Sample(kind, height, rotation, text, jpeg))
    return samples


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def normalise(text: str, how: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    if how == "none":
        return "".join(text.split())
    if how == "spaces":
        return " ".join(text.split())
    lines = []
    for line in text.split("\n"):
        if line.strip():
            indent = len(line) - len(line.lstrip(" "))
            lines.append(" " * indent + " ".join(line.split()))
    return "\n".join(lines)


def cer(reference: str, hypothesis: str, *, spaces: bool = False, layout: bool = False) -> float:
    how = "layout" if layout else "spaces" if spaces else "none"
    ref, hyp = normalise(reference, how), normalise(hypothesis, how)
    return edit_distance(ref, hyp) / max(len(ref), 1)


def decode(data: bytes, param: str) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def measure(samples: list[Sample], models: dict[str, OcrModel]) -> dict[str, list[dict[str, Any]]]:
    """Each model reads each sample; the models take turns image by image, so a busy spell
    of the shared machine falls on all of them alike."""
    for model in models.values():
        model.warm_up()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    for sample in samples:
        image = decode(sample.jpeg, "")
        for name, model in models.items():
            started = time.perf_counter()
            text = model.read(image)
            seconds = time.perf_counter() - started
            rows[name].append(
                {
                    "kind": sample.kind,
                    "height": sample.height,
                    "rotation": sample.rotation,
                    "reference": sample.text,
                    "read": text,
                    "cer": cer(sample.text, text),
                    "cer_spaces": cer(sample.text, text, spaces=True),
                    "cer_layout": cer(sample.text, text, layout=True),
                    "ms": seconds * 1000,
                    "pixels": list(image.size),
                }
            )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean CER per class, at all heights and at >= 20 px (the issue's targets), per height."""

    def entry(name: str, heights: str, chosen: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "class": name,
            "heights": heights,
            "images": len(chosen),
            "cer": statistics.mean(row["cer"] for row in chosen),
            "cer_spaces": statistics.mean(row["cer_spaces"] for row in chosen),
            "cer_layout": statistics.mean(row["cer_layout"] for row in chosen),
            "ms_p50": statistics.median(row["ms"] for row in chosen),
        }

    table = []
    for kind in KINDS:
        table.append(entry(kind, "12-48 px", [row for row in rows if row["kind"] == kind]))
        table.append(
            entry(kind, ">= 20 px", [r for r in rows if r["kind"] == kind and r["height"] >= 20])
        )
    for height in HEIGHTS:
        table.append(entry("all", f"{height} px", [r for r in rows if r["height"] == height]))
    table.append(entry("all", "12-48 px", rows))
    return table
