"""The no-text gate: a photo without text spends no recognition.

Before the full detection (which RapidOCR runs at up to 2000 px on the longer side: a
1080p photo is detected at 1920 x 1088), the detector looks at the image shrunk to
`GATE_SIDE` on its longer side; when it finds no text box there, the image is taken to hold
no text and nothing more runs. Only an image larger than the gate's side is gated: for a
smaller one the full detection is no dearer than the gate, and no box means no recognition
anyway.

640 px (`CLIP_PROXY_OCR_GATE_SIDE`) was chosen by measurement with PP-OCRv4 (bench/ocr_gate.py,
bench/results/ocr-gate.md): no text image of bench/ocr.py's corpus was lost and every 1080p
photo was skipped. With PP-OCRv6 a dense 1400 x 1400 page of 12 px lines shrunk to 640 showed
no box at all, so the gate never shrinks an image by more than `MAX_SHRINK` (1.6x): a bigger
image is gated at its longer side / 1.6 (a 1080p image at 1200 px), which keeps small text
and still skips most photos (not a cat's fur, which the detector takes for a box). A
deployment that wants no gate at all sets 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# The longer side the gate's detection sees (0 turns the gate off).
GATE_SIDE = 640


# The most the gate shrinks an image: a dense page of 12 px lines shrunk further (a 1400 px
# page to 640, 2.2x) showed PP-OCRv6's detector no line at all, and the gate skipped text a
# user sent; at 1.6x (875 px) every line was still found. A bigger image is gated at its
# longer side / MAX_SHRINK, which still spares a 1080p photo most of the full detection.
MAX_SHRINK = 1.6


def gate_side_for(shape: tuple[int, ...], side: int) -> int:
    """The longer side the gate looks at for an image of `shape`: `side`, or larger where
    `side` would shrink small text past what the detector sees."""
    return max(side, math.ceil(max(shape[:2]) / MAX_SHRINK))


def gated(shape: tuple[int, ...], side: int) -> bool:
    """Whether an image of `shape` (rows, columns, ...) is worth gating."""
    return side > 0 and max(shape[:2]) > gate_side_for(shape, side)


def shrunk(image: np.ndarray, side: int) -> np.ndarray:
    """`image` (BGR) with its longer side at `side`, by area averaging (text strokes stay)."""
    import cv2  # installed with RapidOCR

    height, width = image.shape[:2]
    ratio = side / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    resized: np.ndarray = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized


# A box the gate finds covering this share of the shrunk image or more, less than twice as
# wide as tall, is a photo's texture taken for text, not a line: PP-OCRv6's detector saw
# tests/data/coffee.png's cup, at 1080p shrunk to 640, as one 511 x 359 box (a one-line
# screenshot's box covers as much, but is a wide strip; ocr.py drops such a box too).
TEXTURE_SHARE = 0.25


def text_boxes(boxes: list[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    """The gate's boxes that may be lines of text (not a photo's texture)."""
    limit = TEXTURE_SHARE * shape[0] * shape[1]
    kept = []
    for box in boxes:
        points = np.asarray(box, dtype=np.float64)
        x, y = points[:, 0], points[:, 1]
        area = abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2
        width = float(np.linalg.norm(points[1] - points[0]))
        height = float(np.linalg.norm(points[3] - points[0]))
        if area < limit or width >= 2 * height:
            kept.append(box)
    return kept


# Told when the gate skips an image's reading, with the reason (`no_text`).
OnSkip = Callable[[str], None]
