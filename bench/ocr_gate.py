"""The no-text gate (app/engine/ocr_gate.py), measured: which gate side loses no text line
of 20 px and up, and what a photo without text costs with it and without.

Text: bench/ocr.py's corpus (English, Chinese, code, errors at 12-48 px, rotated -5/0/+5),
and, harder for a gate, 1920 x 1080 pages holding a single line of each class at each
height (light and dark themes), where shrinking the page shrinks the line most. An image
"loses its text" when the reading without the gate finds text and the gate finds no box.

Photos: the photographs of tests/data (scikit-image's samples) at their size and scaled
to 1920 x 1080 (JPEG q90), read without the gate (today) and with it; time per image on
one core (p50 of 5 reads, after one warm read), decode included and not.

    python -m bench.ocr_gate        # a few minutes on 2 shared cores; bench/results/ocr-gate.*
"""

from __future__ import annotations

import functools
import io
import json
import platform
import statistics
import time
from typing import Any

from PIL import Image

from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import OcrModel
from bench.ocr import RESULTS
from bench.ocr_corpus import CHINESE, CJK, CODE, DEJAVU, ENGLISH, ERRORS, HEIGHTS, MONO, corpus
from tests.helpers import DATA

SIDES = (0, 320, 480, 640, 960)  # 0: no gate (today)
PHOTO_SIDES = (0, 640, 960)
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg")


def decode(data: bytes, param: str) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def page(line: str, font_path: str, height: int, dark: bool, where: int) -> bytes:
    """One line on a 1920 x 1080 page, at one of three places."""
    from PIL import ImageDraw, ImageFont

    background, ink = ((30, 30, 30), (220, 220, 220)) if dark else ((255, 255, 255), (0, 0, 0))
    image = Image.new("RGB", (1920, 1080), background)
    font = ImageFont.truetype(font_path, height)
    x, y = [(40, 40), (700, 520), (1100, 1000)][where]
    x = min(x, max(0, 1920 - int(font.getlength(line)) - 20))
    ImageDraw.Draw(image).text((x, y - height if y > 900 else y), line, fill=ink, font=font)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def sparse_pages() -> list[tuple[str, int, bytes]]:
    lines = [
        ("en", ENGLISH[0], DEJAVU, False),
        ("zh", CHINESE[0], CJK, False),
        ("code", CODE[0][1], MONO, False),
        ("error", ERRORS[1][0], MONO, True),
    ]
    pages = []
    for kind, line, font, dark in lines:
        for height in HEIGHTS:
            for where in range(3):
                pages.append((f"page-{kind}", height, page(line, font, height, dark, where)))
    return pages


def photo(name: str, size: tuple[int, int] | None) -> bytes:
    if size is None:
        return (DATA / name).read_bytes()
    image = Image.open(DATA / name).convert("RGB")
    # Cover the size (scale up, centre crop), as a 1080p photo would fill it.
    ratio = max(size[0] / image.width, size[1] / image.height)
    scaled = image.resize(
        (round(image.width * ratio), round(image.height * ratio)), Image.Resampling.BICUBIC
    )
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    buffer = io.BytesIO()
    scaled.crop((left, top, left + size[0], top + size[1])).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def text_kept(models: dict[int, OcrModel], skips: dict[int, int]) -> list[dict[str, Any]]:
    samples = [(s.kind, s.height, s.jpeg) for s in corpus()] + sparse_pages()
    rows = []
    for kind, height, data in samples:
        image = decode(data, "")
        row: dict[str, Any] = {"kind": kind, "height": height, "size": list(image.size)}
        for side, model in models.items():
            before = skips[side]
            text = model.read(image)
            row[f"text_{side}"] = text
            row[f"skipped_{side}"] = skips[side] > before
        rows.append(row)
    return rows


def photo_costs(models: dict[int, OcrModel], skips: dict[int, int]) -> list[dict[str, Any]]:
    rows = []
    for name in PHOTOS:
        for size in (None, (1920, 1080)):
            data = photo(name, size)
            image = decode(data, "")
            row: dict[str, Any] = {"photo": name, "size": list(image.size)}
            for side in PHOTO_SIDES:
                model = models[side]
                before = skips[side]
                model.read(image)  # warm for this shape
                read_s, full_s = [], []
                for _ in range(5):
                    started = time.perf_counter()
                    text = model.read(image)
                    read_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    model.run([ImageBytes(data, "", "")])
                    full_s.append(time.perf_counter() - started)
                row[f"text_{side}"] = text
                row[f"skipped_{side}"] = skips[side] > before
                row[f"read_ms_{side}"] = statistics.median(read_s) * 1000
                row[f"decode_read_ms_{side}"] = statistics.median(full_s) * 1000
            rows.append(row)
    return rows


def main() -> None:
    skips = dict.fromkeys(SIDES, 0)

    def counter(side: int) -> Any:
        def skipped(reason: str) -> None:
            skips[side] += 1

        return skipped

    models = {
        side: OcrModel.load(threads=1, decode=decode, gate_side=side, on_skip=counter(side))
        for side in SIDES
    }
    for model in models.values():
        model.warm_up()
    texts = text_kept(models, skips)
    photos = photo_costs(models, skips)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"machine": platform.platform(), "texts": texts, "photos": photos}
    (RESULTS / "ocr-gate.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (RESULTS / "ocr-gate.md").write_text(render(texts, photos))
    print(render(texts, photos))


def render(texts: list[dict[str, Any]], photos: list[dict[str, Any]]) -> str:
    out = [
        "# The no-text gate (`python -m bench.ocr_gate`)",
        "",
        "One core (OCR_THREADS=1), PP-OCRv6 (rapidocr 3.10). An image *loses its text*",
        "when the reading without the gate finds text and the gate finds no box. Images no",
        "larger than the gate's side are not gated (the full detection is the gate).",
        "",
        "## Text kept, by gate side (images with text that the gate skipped)",
        "",
        "| gate side | gated images | lost, >= 20 px | lost, 12-16 px | photos skipped |",
        "| --- | --- | --- | --- | --- |",
    ]
    with_text = [row for row in texts if row["text_0"].strip()]
    for side in SIDES[1:]:
        gated = [row for row in texts if max(row["size"]) > side]
        lost = [row for row in with_text if row[f"skipped_{side}"]]
        big = [row for row in lost if row["height"] >= 20]
        small = [row for row in lost if row["height"] < 20]
        out.append(
            f"| {side} | {len(gated)} of {len(texts)} | {len(big)} | {len(small)} | "
            f"{'see below' if side in PHOTO_SIDES else '-'} |"
        )
    out += [
        "",
        f"{len(with_text)} of {len(texts)} text images are read with text without the gate.",
        "Lost at 640: "
        + (
            ", ".join(
                f"{row['kind']} {row['height']} px {row['size'][0]}x{row['size'][1]}"
                for row in with_text
                if row["skipped_640"]
            )
            or "none"
        ),
        "",
        "## Photos without text: time per image on one core (p50 of 5)",
        "",
        "Read: from decoded pixels (the proxy's OCR now takes the request's shared decode);",
        "decode+read: from the JPEG/PNG bytes. Ratios against today's (no gate).",
        "",
        "| photo | size | today: read ms | gate 640 | gate 960 | today: decode+read ms |"
        " gate 640 | gate 960 | skipped (640/960) | today's text |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in photos:
        cell = functools.partial(_cell, row)

        skipped = "/".join("yes" if row[f"skipped_{side}"] else "no" for side in (640, 960))
        out.append(
            f"| {row['photo']} | {row['size'][0]}x{row['size'][1]} | {row['read_ms_0']:.0f} | "
            f"{cell('read_ms', 640)} | {cell('read_ms', 960)} | {row['decode_read_ms_0']:.0f} | "
            f"{cell('decode_read_ms', 640)} | {cell('decode_read_ms', 960)} | {skipped} | "
            f"{row['text_0']!r} |"
        )
    return "\n".join(out) + "\n"


def _cell(row: dict[str, Any], key: str, side: int) -> str:
    return f"{row[f'{key}_{side}']:.0f} ({row[f'{key}_{side}'] / row[f'{key}_0']:.2f}x)"


if __name__ == "__main__":
    main()
