"""The no-text gate: a photo without text spends no recognition.

The gate is the detection itself: PP-OCRv6's detector sees the page at most 960 px on its
longer side (`ocr_models.MAX_SIDE`), and when it finds no box that may be a line of text
(`text_boxes`: a photo's texture taken for a box does not count) nothing is recognised and
the skip is counted (`clip_proxy_ocr_skipped_total{reason="no_text"}`). A 1080p photo costs
one 960 px detection (about 0.2 s on one core, against about 1 s for PP-OCRv4, which detected
at full size: bench/results/ocr-gate.md).

A cheaper pre-check is optional (`CLIP_PROXY_OCR_GATE_SIDE`, 0 by default): an image larger
than that side is first detected shrunk to it. It was chosen at 640 with PP-OCRv4, but with
PP-OCRv6 detecting at 960 anyway it saved little on photos, read text images twice, and
shrunk to 640 a dense 1400 x 1400 page of 12 px lines showed no box at all (the page would
have been skipped whole). So it is off, and when set it never shrinks an image by more than
`MAX_SHRINK` (1.6x).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# The longer side the gate's detection sees (0 turns the gate off).
GATE_SIDE = 0


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
# ... on an image at least this tall and wide (a photo, not a cropped button or word).
TEXTURE_MIN_SIDE = 300


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
