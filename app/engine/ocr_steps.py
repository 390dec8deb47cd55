"""RapidOCR's reading cut into steps that a deadline can stop: detection, then a few lines
at a time, each step one `next()` of a generator.

RapidOCR 1.4's own `__call__` reads a whole page in one call: a dense page of 12 px lines
held a worker for 88 s after its caller had given up. Here the same parts (its detector,
its recogniser, its crops, its box sorting) are driven one step at a time, so the pool
(`workers.py`) can stop a reading past its deadline between two steps and interleave the
steps of other clients' images. An ONNX Runtime call already running when the deadline
passes is ended by `RunOptions.terminate`, set by a timer at the deadline; the pool sets it
too to preempt a long step for a neighbour's short image (the step runs again later).

Work per image is bounded before it starts: the page is read at most 2000 px on its longer
side (RapidOCR's `max_side_len`; detection sees at most 960) and at most `max_boxes` text
boxes are recognised, top to bottom (`CLIP_PROXY_OCR_MAX_BOXES`).

    steps = OcrSteps(rapidocr, max_boxes=200)
    found = drain(steps.read(bgr_pixels, Deadline.after(5.0)))   # [(box, text, score)]
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from app.engine.deadline import Deadline
from app.engine.ocr_gate import GATE_SIDE, OnSkip, gated, shrunk
from app.errors import EngineTimeout

# Recognised lines per step: one line of a dense 1400 px page took 0.3-1.5 s on a busy core.
LINES_PER_STEP = 1

T = TypeVar("T")
Found = list[tuple[np.ndarray, str, float]]


class OcrDeadlinePassed(EngineTimeout):
    """The image's reading was stopped at its deadline (between steps or mid-inference)."""

    def __init__(self) -> None:
        super().__init__("OCR took longer than its deadline on an image")


def drain(steps: Generator[None, None, T]) -> T:
    """Run every step; the generator's return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


@contextmanager
def terminated_at(deadline: Deadline) -> Iterator[Any]:
    """Run options whose `terminate` flag a timer sets at `deadline` (none when infinite)."""
    import onnxruntime  # type: ignore[import-untyped]  # loaded with RapidOCR, not at import

    options = onnxruntime.RunOptions()
    timer = None
    if math.isfinite(deadline.at):
        timer = threading.Timer(max(deadline.remaining(), 0.0), _terminate, (options,))
        timer.daemon = True
        timer.start()
    try:
        yield options
    finally:
        if timer is not None:
            timer.cancel()


def _terminate(options: Any) -> None:
    options.terminate = True


class OcrSteps:
    """One RapidOCR instance driven step by step. Not thread-safe (one per worker)."""

    def __init__(
        self,
        engine: Any,
        *,
        max_boxes: int = 200,
        gate_side: int = GATE_SIDE,
        on_skip: OnSkip | None = None,
    ) -> None:
        self._engine = engine
        self._max_boxes = max_boxes
        self._gate_side = gate_side
        self._on_skip = on_skip

    def read(self, pixels: np.ndarray, deadline: Deadline) -> Generator[Any, None, Found]:
        """Boxes (in the read image's coordinates), texts and scores; BGR pixels in."""
        engine = self._engine
        image, _, _ = engine.preprocess(pixels)  # longer side <= 2000, shorter >= 30
        image, _ = engine.maybe_add_letterbox(image, {})
        with terminated_at(deadline) as options:
            yield options  # the handle the pool interrupts a step with (`Preempted`)
            if gated(image.shape, self._gate_side):
                if not (yield from self._gate(image, options, deadline)):
                    return []
                yield options
            boxes = yield from _until_done(lambda: self._detect(image, options), options, deadline)
            yield options
            boxes = boxes[: self._max_boxes]
            found: Found = []
            for start in range(0, len(boxes), LINES_PER_STEP):
                if deadline.expired():
                    raise OcrDeadlinePassed
                chunk = boxes[start : start + LINES_PER_STEP]
                crops = engine.get_crop_img_list(image, chunk)
                recognise = functools.partial(self._recognise, crops, options)
                texts = yield from _until_done(recognise, options, deadline)
                for box, (text, score) in zip(chunk, texts, strict=True):
                    found.append((box, text, score))
                yield options
        return found

    def _gate(
        self, image: np.ndarray, options: Any, deadline: Deadline
    ) -> Generator[Any, None, bool]:
        """Whether the shrunk image shows any text box (`ocr_gate.py`); told to `on_skip`
        when it does not."""
        small = shrunk(image, self._gate_side)
        boxes = yield from _until_done(lambda: self._detect(small, options), options, deadline)
        if not boxes and self._on_skip is not None:
            self._on_skip("no_text")
        return bool(boxes)

    def _detect(self, image: np.ndarray, options: Any) -> list[np.ndarray]:
        detector = self._engine.text_det
        shape = image.shape[:2]
        prepared = detector.get_preprocess(max(shape))(image)
        if prepared is None:
            return []
        predictions = _run(detector.infer, prepared, options)[0]
        boxes, _ = detector.postprocess_op(predictions, shape)
        boxes = detector.filter_tag_det_res(boxes, shape)
        if boxes is None or len(boxes) < 1:
            return []
        return list(self._engine.sorted_boxes(boxes))

    def _recognise(self, crops: list[np.ndarray], options: Any) -> list[tuple[str, float]]:
        """RapidOCR's `TextRecognizer.__call__` for one batch of line crops, in order."""
        recogniser = self._engine.text_rec
        _, height, width = recogniser.rec_image_shape[:3]
        ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
        widest = max([width / height, *ratios])
        batch = np.concatenate(
            [recogniser.resize_norm_img(crop, widest)[np.newaxis, :] for crop in crops]
        ).astype(np.float32)
        predictions = _run(recogniser.session, batch, options)[0]
        decoded = recogniser.postprocess_op(
            predictions, False, wh_ratio_list=ratios, max_wh_ratio=widest
        )
        return [(str(result[0]), float(result[1])) for result in decoded]


class _Stopped(Exception):
    """An inference ended by its run options' `terminate` flag."""


def _until_done(work: Callable[[], T], options: Any, deadline: Deadline) -> Generator[Any, None, T]:
    """`work()`; run again on a later step when the pool stopped it for a neighbour's step
    (the pool sets `terminate` to preempt), `OcrDeadlinePassed` when the deadline did."""
    while True:
        try:
            return work()
        except _Stopped:
            if deadline.expired():
                raise OcrDeadlinePassed from None
            options.terminate = False  # preempted: its turn comes again
            yield options


def _run(session: Any, data: np.ndarray, options: Any) -> Any:
    """One inference with `options` (RapidOCR's session wrapper takes none)."""
    feed = {session.get_input_names()[0]: data}
    try:
        return session.session.run(session.get_output_names(), feed, options)
    except Exception as exc:
        if options.terminate:
            raise _Stopped from exc
        raise
