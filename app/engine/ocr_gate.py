"""The no-text gate: a photo without text spends no recognition.

Before the full detection (which RapidOCR runs at up to 2000 px on the longer side: a
1080p photo is detected at 1920 x 1088), the detector looks at the image shrunk to
`GATE_SIDE` on its longer side; when it finds no text box there, the image is taken to hold
no text and nothing more runs. Only an image larger than the gate's side is gated: for a
smaller one the full detection is no dearer than the gate, and no box means no recognition
anyway.

640 px (`CLIP_PROXY_OCR_GATE_SIDE`) was chosen by measurement (bench/ocr_gate.py,
bench/results/ocr-gate.md). On bench/ocr.py's corpus no text image was lost at 640, and
every 1080p photo was skipped (OCR 0.07-0.16x of its time without the gate). On harder
1920 x 1080 pages holding one short line, 3 of 12 lines of 20 px (none of 24 px and up)
were lost at 640; at 960 none was lost at any height, but two of five 1080p photos showed
boxes and paid the gate on top of the full reading (1.2-1.6x). A deployment whose images
are sparse pages of small text sets 960 (or 0: no gate).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The longer side the gate's detection sees (0 turns the gate off).
GATE_SIDE = 640


def gated(shape: tuple[int, ...], side: int) -> bool:
    """Whether an image of `shape` (rows, columns, ...) is worth gating."""
    return side > 0 and max(shape[:2]) > side


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
