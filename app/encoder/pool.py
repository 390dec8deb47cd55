"""The encoder pool: one worker thread per device, each batching images dynamically.

Every queued image carries its own future. A worker takes the first waiting image, then
keeps taking until it has `max_batch` images or `max_wait_ms` have passed since the first,
runs the batch, and resolves each future on its caller's event loop. All workers take
from one bounded queue, so load spreads over devices by itself, and a full queue fails
fast with `Overloaded` instead of growing latency without bound.

    pool = EncoderPool(encoders, max_batch=32, max_wait_ms=5, max_queue=1024)
    pool.start()
    vector = await pool.encode(pixels)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from app.encoder.preprocess import Pixels, PreprocessSpec
from app.errors import EncoderFailed, Overloaded

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the pool needs from a model copy (see `ClipImageEncoder`)."""

    spec: PreprocessSpec

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, pixels: Pixels) -> np.ndarray: ...

    def warm_up(self) -> None: ...


@dataclass
class _Job:
    pixels: Pixels
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)

    def abandoned(self) -> bool:
        return self.future.done()  # cancelled by a caller that went away


@dataclass(frozen=True)
class BatchReport:
    """What a worker tells the metrics after each batch."""

    device: str
    size: int
    queue_wait_s: list[float]
    encode_s: float


class EncoderPool:
    """Dynamic batching over one or more model copies."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int = 1024,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        if not encoders:
            raise ValueError("an encoder pool needs at least one encoder")
        self._encoders = list(encoders)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._threads: list[threading.Thread] = []

    @property
    def spec(self) -> PreprocessSpec:
        return self._encoders[0].spec

    @property
    def dim(self) -> int:
        return self._encoders[0].dim

    @property
    def devices(self) -> list[str]:
        return [encoder.name for encoder in self._encoders]

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        for encoder in self._encoders:
            thread = threading.Thread(
                target=self._run, args=(encoder,), name=f"encoder-{encoder.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()

    async def encode(self, pixels: Pixels) -> np.ndarray:
        """The unit vector of one preprocessed image, computed in some batch."""
        loop = asyncio.get_running_loop()
        job = _Job(pixels=pixels, future=loop.create_future(), loop=loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded("the image encoder queue is full; retry shortly") from None
        return await job.future

    def _run(self, encoder: Encoder) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._encode_batch(encoder, batch)

    def _collect(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self._max_wait_s
        while len(batch) < self._max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None and remaining <= 0:
                break
            if job is None:
                self._queue.put(None)  # leave the stop signal for the next collect
                break
            batch.append(job)
        return batch

    def _encode_batch(self, encoder: Encoder, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.abandoned()]
        if not live:
            return
        started = time.perf_counter()
        try:
            vectors = encoder.encode(np.stack([job.pixels for job in live]))
        except Exception as exc:
            logger.exception("encoder batch failed", extra={"device": encoder.name})
            for job in live:
                _settle(job, error=EncoderFailed(f"the image encoder failed: {exc}"))
            return
        finished = time.perf_counter()
        for job, vector in zip(live, vectors, strict=True):
            _settle(job, result=vector)
        if self._on_batch is not None:
            self._on_batch(
                BatchReport(
                    device=encoder.name,
                    size=len(live),
                    queue_wait_s=[started - job.queued_at for job in live],
                    encode_s=finished - started,
                )
            )


def _settle(
    job: _Job, *, result: np.ndarray | None = None, error: BaseException | None = None
) -> None:
    def resolve() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        elif result is not None:
            job.future.set_result(result)

    # A closed loop means the caller is gone: nobody is waiting for this result.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(resolve)
