"""What the encoder pool's loops share: the encoder protocols, the queued image (a job), a
device's worker, a batch in the pipeline, the events the pool reports, and how a job is
answered on its caller's event loop.

`pool.py` supervises the workers; `cpu_loop.py` and `cuda_loop.py` are the two ways a
worker runs its batches. Both resolve futures with `settle`, never directly: the future
belongs to the caller's event loop, and the worker is a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from app.engine.preprocess import Pixels, PreprocessSpec
from app.errors import Overloaded


class Encoder(Protocol):
    """What the pool needs from a model copy (see `ClipImageEncoder`)."""

    spec: PreprocessSpec

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, pixels: Pixels) -> np.ndarray: ...

    def warm_up(self) -> None: ...

    def is_out_of_memory(self, error: BaseException) -> bool: ...

    def release_memory(self) -> None: ...

    def fall_back_to_cpu(self) -> bool:
        """Move the model to the CPU; False if it is there already."""
        ...


@runtime_checkable
class PipelinedEncoder(Encoder, Protocol):
    """An encoder whose batch goes through three steps the pool can overlap (CUDA)."""

    @property
    def pipelined(self) -> bool: ...

    def stage(self, pixels: Pixels) -> Any:
        """Start moving a batch to the device."""
        ...

    def launch(self, staged: Any) -> Any:
        """Queue the model on a staged batch; returns before the device is done."""
        ...

    def collect(self, launched: Any) -> np.ndarray:
        """Wait for a launched batch's vectors."""
        ...


@dataclass(frozen=True)
class BatchReport:
    """What a worker tells the metrics after each model call."""

    device: str
    size: int
    queue_wait_s: list[float]
    encode_s: float


class PoolEvents:
    """What the pool reports as it runs; `main.py` maps these onto metrics. No-ops here."""

    def batch(self, report: BatchReport) -> None:
        """A model call finished (a batch, or one part of a split batch)."""

    def dropped(self, count: int) -> None:
        """Images skipped before compute because their caller had gone."""

    def cpu_fallback(self, device: str) -> None:
        """The worker of `device` now runs its model on the CPU."""

    def worker_restarted(self, device: str) -> None:
        """The worker of `device` died and a new thread replaced it."""


@dataclass
class Job:
    """One queued image and the future its caller awaits."""

    pixels: Pixels
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)

    def abandoned(self) -> bool:
        # Done before we resolved it: cancelled by a caller that went away or timed out.
        return self.future.done()


@dataclass
class Worker:
    """One device: its model copy, its current thread and what it holds right now."""

    encoder: Encoder
    device: str
    thread: threading.Thread | None = None
    warm: bool = False
    in_flight: list[Job] = field(default_factory=list)
    restarts: int = 0
    next_start_at: float = 0.0
    # The pipeline's stager and worker threads both change in_flight.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, jobs: list[Job]) -> None:
        with self.lock:
            self.in_flight = [*self.in_flight, *jobs]

    def release(self, jobs: list[Job]) -> None:
        done = {id(job) for job in jobs}
        with self.lock:
            self.in_flight = [job for job in self.in_flight if id(job) not in done]

    def is_up(self) -> bool:
        return self.warm and self.thread is not None and self.thread.is_alive()


@dataclass
class Batch:
    """A batch in the pipeline: staged (or failed to), then launched."""

    jobs: list[Job]
    handle: Any = None  # what stage, then launch, returned
    error: Exception | None = None
    started: float = field(default_factory=time.perf_counter)


def shutting_down() -> Overloaded:
    return Overloaded("the image encoder is shutting down", retry_after_s=1)


def settle(
    job: Job, *, result: np.ndarray | None = None, error: BaseException | None = None
) -> None:
    """Answer `job` on its caller's event loop (once: a later answer is ignored)."""

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
