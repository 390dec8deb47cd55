"""The no-text gate (app/engine/ocr_gate.py): photos without text spend no recognition,
seen in a real proxy's /metrics (`clip_proxy_ocr_skipped_total{reason="no_text"}`); every
text image of bench/ocr.py's corpus keeps its text, as do 1920 x 1080 pages holding one 20
or 24 px line; with the optional pre-check set, a dense 1400 x 1400 page of 12 px lines still
shows the detector its lines."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from app.engine.deadline import Deadline
from app.engine.ocr import OcrModel
from app.engine.ocr_gate import GATE_SIDE, gate_side_for, gated, shrunk, text_boxes
from app.engine.ocr_models import RapidOcrEngine
from app.engine.ocr_steps import terminated_at
from bench.ocr_corpus import CHINESE, CJK, CODE, DEJAVU, ENGLISH, ERRORS, MONO, corpus
from bench.ocr_gate import page, photo
from tests.helpers import (
    DRY_RUN,
    ProxyServer,
    data_url,
    dense_page,
    image_message,
    metric_value,
)

SKIPPED = "clip_proxy_ocr_skipped_total"


def decode(data: bytes, param: str) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def fresh(data: bytes, seed: int) -> bytes:
    """The same JPEG with a comment: bytes no other test sends."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=90, comment=f"{seed}".encode())
    return buffer.getvalue()


def test_photos_without_text_spend_no_recognition(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = start_proxy(prompt_preset="describe", ocr_enabled=True, ocr_threads=1)
    photos = [
        fresh(photo(name, (1920, 1080)), 2801 + n)
        # (chelsea.png's fur shows the detector a box even shrunk: that one is read in full)
        for n, name in enumerate(("coffee.png", "rocket.jpg", "astronaut.png"))
    ]
    before = metric_value(proxy.url, SKIPPED, reason="no_text")
    runs = metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count")

    for data in photos:
        reply = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"messages": [image_message(data_url(data))]},
            headers=DRY_RUN,
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert "Text in the image: none" in str(reply.json()["messages"][-1]["content"])

    assert metric_value(proxy.url, "clip_proxy_ocr_duration_seconds_count") - runs == 3
    assert metric_value(proxy.url, SKIPPED, reason="no_text") - before == 3


@pytest.fixture(scope="module")
def gated_model() -> tuple[OcrModel, list[str]]:
    skips: list[str] = []
    model = OcrModel.load(threads=1, decode=decode, on_skip=skips.append)
    return model, skips


def test_the_corpus_text_images_the_gate_sees_keep_their_text(
    gated_model: tuple[OcrModel, list[str]],
) -> None:
    model, skips = gated_model
    samples = [s for s in corpus() if s.height >= 20]
    gated = [s for s in samples if max(Image.open(io.BytesIO(s.jpeg)).size) > GATE_SIDE]
    assert len(gated) >= 5  # the gate has work to do in this corpus

    lost = [
        f"{s.kind} {s.height} px {s.rotation} deg"
        for s in gated
        if not model.read(decode(s.jpeg, "")).strip()
    ]

    assert lost == []
    assert skips == []


@pytest.mark.parametrize(
    ("line", "font", "dark"),
    [
        (ENGLISH[0], DEJAVU, False),
        (CHINESE[0], CJK, False),
        (CODE[0][1], MONO, False),
        (ERRORS[1][0], MONO, True),
    ],
    ids=["en", "zh", "code", "error"],
)
def test_a_1080p_page_with_one_small_line_keeps_it(
    gated_model: tuple[OcrModel, list[str]], line: str, font: str, dark: bool
) -> None:
    model, skips = gated_model
    before = len(skips)

    text = model.read(decode(page(line, font, 24, dark, where=1), ""))
    # The gate shrinks a 1080p page to 1200 px at most (ocr_gate.MAX_SHRINK): a lone 20 px
    # line stays 12 px there (PP-OCRv4 lost 3 such lines in 12 at 640: ocr-gate.md).
    small = model.read(decode(page(line, font, 20, dark, where=1), ""))

    assert len(skips) == before
    assert text.strip() and small.strip()


def test_a_dense_page_of_small_lines_passes_the_gate() -> None:
    # With the pre-check set to 640 (OCR_GATE_SIDE=640), shrinking this page 2.2x showed
    # PP-OCRv6's detector no line and the gate skipped a page full of text; the pre-check
    # shrinks by MAX_SHRINK at most.
    engine = RapidOcrEngine.load(threads=1)
    image = engine.prepare(np.asarray(decode(dense_page(), ""))[:, :, ::-1])
    side = gate_side_for(image.shape, 640)
    assert gated(image.shape, 640) and side > 640

    small = shrunk(image, side)
    with terminated_at(Deadline.after(120)) as options:
        boxes = text_boxes(engine.detect(small, options), small.shape)

    assert len(boxes) >= 20
