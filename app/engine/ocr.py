"""The text in an image, read by RapidOCR (PP-OCRv4 detection + recognition, Chinese and
English), whose wheel ships its ONNX models: it works offline.

The only module that imports rapidocr_onnxruntime. One `OcrModel` per worker thread
(`workers.py`); each item is an image's bytes, decoded here, in the worker.

    model = OcrModel.load(threads=1, decode=decode)
    [text] = model.run([ImageBytes(data, sha256, param)])     # "ERROR: connection refused\\n..."

Detection sees the image with its longer side at most `max_side` pixels (960, PaddleOCR's
own default; RapidOCR's "shorter side at least 736" upscales a 60-px-high screenshot twelve
times and took 20 s on it). Boxes are put back into reading order: boxes whose vertical
centres are within half a line height of each other form a line, left to right, joined by
a space; lines are joined by newlines. NFKC folds the full-width punctuation the Chinese
model often writes (full-width commas and brackets) into ASCII.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

from app.engine.deadline import Deadline
from app.engine.image_pipeline import ImageBytes
from app.engine.ocr_gate import GATE_SIDE, OnSkip
from app.engine.ocr_steps import OcrSteps, drain

logger = logging.getLogger(__name__)

MAX_SIDE = 960
# Recognised pieces scoring below this are left out (RapidOCR's own default).
MIN_SCORE = 0.5
# How far a detected text box is grown before the line is cropped for recognition. RapidOCR's
# 1.6 crops English lines so tightly that the recogniser drops the spaces between words
# ("ERROR:connectionrefusedonport5432"); 2.0 keeps them (bench/results/ocr.md).
UNCLIP_RATIO = 2.0


Decode = Callable[[bytes, str], Image.Image]


def ocr_identity(gate_side: int = GATE_SIDE) -> str:
    """What decides the text for given bytes: the engine's version and its settings."""
    return (
        f"rapidocr-onnxruntime@{metadata.version('rapidocr-onnxruntime')}"
        f"|max_side={MAX_SIDE}|unclip={UNCLIP_RATIO}|gate={gate_side}"
    )


class OcrModel:
    """One RapidOCR instance (three ONNX sessions). Not thread-safe: one per worker."""

    def __init__(
        self,
        engine: Any,
        decode: Decode,
        max_boxes: int = 200,
        *,
        gate_side: int = GATE_SIDE,
        on_skip: OnSkip | None = None,
    ) -> None:
        self._engine = engine
        self._decode = decode
        self._steps = OcrSteps(engine, max_boxes=max_boxes, gate_side=gate_side, on_skip=on_skip)

    @classmethod
    def load(
        cls,
        *,
        threads: int,
        decode: Decode,
        use_cuda: bool = False,
        max_boxes: int = 200,
        gate_side: int = GATE_SIDE,
        on_skip: OnSkip | None = None,
    ) -> OcrModel:
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(
            # The 0/180-degree classifier is off: screenshots and documents arrive upright,
            # and it turned a plain 20 px English line upside down (then read nothing).
            use_cls=False,
            det_limit_type="max",
            det_limit_side_len=MAX_SIDE,
            det_unclip_ratio=UNCLIP_RATIO,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
            det_use_cuda=use_cuda,
            cls_use_cuda=use_cuda,
            rec_use_cuda=use_cuda,
        )
        return cls(engine, decode, max_boxes, gate_side=gate_side, on_skip=on_skip)

    def warm_up(self) -> None:
        blank = np.full((32, 96, 3), 255, dtype=np.uint8)
        self._engine(blank)

    def run(self, items: Sequence[ImageBytes]) -> list[str | BaseException]:
        results: list[str | BaseException] = []
        for item in items:
            try:
                results.append(drain(self.begin(item, Deadline(math.inf))))
            except Exception as exc:  # one bad image fails only its own item
                results.append(exc)
        return results

    def begin(self, item: ImageBytes, deadline: Deadline) -> Generator[Any, None, str]:
        """The reading of one image as steps (decode, detection, then a few lines at a
        time): each `next()` runs one; the pool interleaves the steps of several images
        and drops an image past its deadline between two (`workers.py`)."""
        image = item.decode_with(self._decode)
        yield
        return (yield from self._read_steps(image, deadline))

    def read(self, image: Image.Image) -> str:
        """The image's text in reading order; "" when it holds none."""
        return drain(self._read_steps(image, Deadline(math.inf)))

    def _read_steps(self, image: Image.Image, deadline: Deadline) -> Generator[Any, None, str]:
        # RapidOCR takes OpenCV's BGR order.
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        found = yield from self._steps.read(pixels, deadline)
        pieces = [
            (np.asarray(box, dtype=np.float64), text)
            for box, text, score in found
            if score >= MIN_SCORE and text.strip()
        ]
        return unicodedata.normalize("NFKC", reading_order(pieces))


def reading_order(pieces: list[tuple[np.ndarray, str]]) -> str:
    """Lines top to bottom, pieces left to right within a line.

    Each box is a rotated rectangle (top-left, top-right, bottom-right, bottom-left), so a
    tilted line still has its true text height and slope: a piece joins the line whose
    course, extended to the piece's centre, passes within half a text height of it.
    """
    lines: list[_Line] = []
    for box, text in sorted(pieces, key=lambda piece: float(piece[0][:, 1].mean())):
        centre_x, centre_y = (float(value) for value in box.mean(axis=0))
        height = float(np.linalg.norm(box[3] - box[0]))
        run, rise = (float(value) for value in box[1] - box[0])
        slope = rise / run if run > 0 else 0.0
        for line in lines:
            expected = line.y + line.slope * (centre_x - line.x)
            if abs(centre_y - expected) <= max(height, line.height) / 2:
                line.pieces.append((float(box[:, 0].min()), text))
                break
        else:
            lines.append(_Line(centre_x, centre_y, slope, height, [(float(box[:, 0].min()), text)]))
    lines.sort(key=lambda line: line.y - line.slope * line.x)  # where each meets x = 0
    return "\n".join(" ".join(text for _, text in sorted(line.pieces)) for line in lines)


@dataclass
class _Line:
    x: float  # the centre of its first piece
    y: float
    slope: float
    height: float
    pieces: list[tuple[float, str]]
