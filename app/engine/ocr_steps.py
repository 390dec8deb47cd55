"""An OCR engine's reading cut into steps that a deadline can stop: detection, then a few lines
at a time, each step one `next()` of a generator.

RapidOCR's own `__call__` reads a whole page in one call: a dense page of 12 px lines
held a worker for 88 s after its caller had given up. Here its parts (`OcrEngine`: the
detector, the recogniser, the crops; `ocr_models.py`) are driven one step at a time, so the pool
(`workers.py`) can stop a reading past its deadline between two steps and interleave the
steps of other clients' images. An ONNX Runtime call already running when the deadline
passes is ended by `RunOptions.terminate`, set by a timer at the deadline; the pool sets it
too to preempt a long step for a neighbour's short image (the step runs again later).

Work per image is bounded before it starts: the page is read at most 2000 px on its longer
side (RapidOCR's `max_side_len`; detection sees at most 960, `ocr_models.MAX_SIDE`) and at
most `max_boxes` text boxes are recognised, top to bottom (`CLIP_PROXY_OCR_MAX_BOXES`).

    steps = OcrSteps(RapidOcrEngine.load(threads=1), max_boxes=200)
    found = drain(steps.read(bgr_pixels, Deadline.after(5.0)))   # [(box, text, score)]
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np

from app.engine.deadline import Deadline
from app.engine.ocr_gate import (
    GATE_SIDE,
    TEXTURE_MIN_SIDE,
    OnSkip,
    gate_side_for,
    gated,
    shrunk,
    text_boxes,
)
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


class OcrEngine(Protocol):
    """What the steps drive: a detector and a recogniser (`ocr_models.RapidOcrEngine`)."""

    def prepare(self, pixels: np.ndarray) -> np.ndarray: ...

    def detect(self, image: np.ndarray, options: Any) -> list[np.ndarray]: ...

    def crops(self, image: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]: ...

    def recognise(self, crops: list[np.ndarray], options: Any) -> list[tuple[str, float]]: ...

    def warm_up(self) -> None: ...


class OcrSteps:
    """One OCR engine driven step by step. Not thread-safe (one per worker)."""

    def __init__(
        self,
        engine: OcrEngine,
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
        image = engine.prepare(pixels)  # longer side <= 2000, shorter >= 30
        with terminated_at(deadline) as options:
            yield options  # the handle the pool interrupts a step with (`Preempted`)
            if gated(image.shape, self._gate_side):
                if not (yield from self._gate(image, options, deadline)):
                    return []
                yield options
            detect = functools.partial(engine.detect, image, options)
            boxes = yield from _until_done(detect, options, deadline)
            yield options
            if not boxes or (
                min(image.shape[:2]) >= TEXTURE_MIN_SIDE and not text_boxes(boxes, image.shape)
            ):
                # The detection (at most 960 px: ocr_models.MAX_SIDE) is the gate itself: no
                # line of text, nothing to recognise, and the skip is counted. (A big squarish
                # box is a photo's texture only on a photo-sized image: on a small crop it may
                # be a short word, which the recogniser's score then judges.)
                if self._on_skip is not None:
                    self._on_skip("no_text")
                return []
            boxes = boxes[: self._max_boxes]
            found: Found = []
            for start in range(0, len(boxes), LINES_PER_STEP):
                if deadline.expired():
                    raise OcrDeadlinePassed
                chunk = boxes[start : start + LINES_PER_STEP]
                recognise = functools.partial(engine.recognise, engine.crops(image, chunk), options)
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
        small = shrunk(image, gate_side_for(image.shape, self._gate_side))
        detect = functools.partial(self._engine.detect, small, options)
        boxes = text_boxes((yield from _until_done(detect, options, deadline)), small.shape)
        if not boxes and self._on_skip is not None:
            self._on_skip("no_text")
        return bool(boxes)


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


def run_session(session: Any, data: np.ndarray, options: Any) -> Any:
    """One inference with `options` (RapidOCR's session wrapper takes none); an inference
    ended by `terminate` raises `_Stopped`, which `OcrSteps` understands."""
    feed = {session.get_input_names()[0]: data}
    try:
        return session.session.run(session.get_output_names(), feed, options)
    except Exception as exc:
        if options.terminate:
            raise _Stopped from exc
        raise
