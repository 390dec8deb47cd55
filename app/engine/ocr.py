"""The text in an image, read by RapidOCR (PP-OCRv6 small detection + recognition, Chinese,
English and more Latin-script languages), whose wheel ships its ONNX models: it works
offline (`ocr_models.py`).

One `OcrModel` per worker thread (`workers.py`); each item is an image's bytes, decoded
here, in the worker.

    model = OcrModel.load(threads=1, decode=decode)
    [text] = model.run([ImageBytes(data, sha256, param)])     # "ERROR: connection refused\\n..."

The recognised pieces are put back on the page by `ocr_layout.py` (`OCR_LAYOUT=layout`:
indentation, columns, tables) or, with `plain`, in reading order as before: boxes whose
vertical centres are within half a line height of each other form a line, left to right,
joined by a space; lines are joined by newlines. NFKC folds the full-width punctuation the
Chinese model often writes (full-width commas and brackets) into ASCII.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from app.engine.deadline import Deadline
from app.engine.image_pipeline import ImageBytes
from app.engine.ocr_gate import GATE_SIDE, OnSkip
from app.engine.ocr_layout import layout_text
from app.engine.ocr_models import MAX_SIDE, UNCLIP_RATIO, RapidOcrEngine, models_identity
from app.engine.ocr_steps import OcrEngine, OcrSteps, drain

logger = logging.getLogger(__name__)

# Recognised pieces scoring below this are left out. PP-OCRv6 scores the benchmark corpus's
# lines at 0.92 or more, a lone `}` on a tilted screenshot at 0.59-0.78 (RapidOCR's own cut
# is 0.5).
MIN_SCORE = 0.6
# A box covering this share of the image or more is believed only with two characters or
# more and from LARGE_MIN_SCORE: the detector took a whole photo (tests/data/coffee.png)
# for one box and read it as "8" (0.67 padded to 6.7:1, 0.93 as `ocr_models` pads).
LARGE_BOX = 0.25
LARGE_MIN_SCORE = 0.9

Decode = Callable[[bytes, str], Image.Image]
Layout = Literal["layout", "plain"]


def ocr_identity(layout: Layout = "layout", gate_side: int = GATE_SIDE) -> str:
    """What decides the text for given bytes: the models, their settings, the layout."""
    return (
        f"{models_identity()}|max_side={MAX_SIDE}|unclip={UNCLIP_RATIO}|gate={gate_side}|{layout}"
    )


class OcrModel:
    """One OCR engine (two ONNX sessions). Not thread-safe: one per worker."""

    def __init__(
        self,
        engine: OcrEngine,
        decode: Decode,
        max_boxes: int = 200,
        layout: Layout = "layout",
        min_score: float = MIN_SCORE,
        *,
        gate_side: int = GATE_SIDE,
        on_skip: OnSkip | None = None,
    ) -> None:
        self._engine = engine
        self._decode = decode
        self._steps = OcrSteps(engine, max_boxes=max_boxes, gate_side=gate_side, on_skip=on_skip)
        self._layout = layout
        self._min_score = min_score

    @classmethod
    def load(
        cls,
        *,
        threads: int,
        decode: Decode,
        use_cuda: bool = False,
        max_boxes: int = 200,
        layout: Layout = "layout",
        gate_side: int = GATE_SIDE,
        on_skip: OnSkip | None = None,
    ) -> OcrModel:
        engine = RapidOcrEngine.load(threads=threads, use_cuda=use_cuda)
        return cls(engine, decode, max_boxes, layout, gate_side=gate_side, on_skip=on_skip)

    def warm_up(self) -> None:
        self._engine.warm_up()

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
        # Boxes are in the read image's coordinates: the same as the pixels' but for pages
        # over 2000 px (shrunk: a large box looks smaller, and is kept) and tiny ones.
        area = float(pixels.shape[0] * pixels.shape[1])
        pieces = []
        for box, text, score in found:
            points = np.asarray(box, dtype=np.float64)
            if _area(points) >= LARGE_BOX * area:
                believed = len(text.strip()) > 1 and score >= LARGE_MIN_SCORE
            else:
                believed = bool(text.strip()) and score >= self._min_score
            if believed:
                pieces.append((points, text))
        text = layout_text(pieces) if self._layout == "layout" else reading_order(pieces)
        return unicodedata.normalize("NFKC", text)


def _area(points: np.ndarray) -> float:
    """A quadrilateral's area (the shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


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
