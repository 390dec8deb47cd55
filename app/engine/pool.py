"""The encoder pool: one supervised worker thread per device, each batching images dynamically.

Every queued image carries its own future. A worker takes the first waiting image, then
keeps taking until it has `max_batch` images or `max_wait_ms` have passed since the first,
drops the images whose caller has gone, runs the batch, and resolves each future on its
caller's event loop. All workers take from one bounded queue, so load spreads over devices
by itself (the images of one request may land in several batches and on several devices),
and a full queue fails fast with `Overloaded` instead of growing latency without bound.

Faults stay small:
- a batch the model fails on is retried image by image, so only the bad image fails;
- CUDA out of memory frees the cache and splits the batch; if one image still does not fit,
  that worker moves its model to the CPU for good and says so (log + event);
- a worker thread that dies (any BaseException) fails its in-flight images at once and a
  supervisor thread starts a replacement, which warms up before it takes work;
- every caller waits with a deadline (`job_timeout_s`), so nothing hangs forever.

On CUDA (an encoder whose `pipelined` is true) each worker is a pipeline of two threads:
a stager collects batch N+1, stacks it, pins it and starts its copy on the encoder's copy
stream while the worker thread runs batch N; the worker queues N+1 on the GPU before it
waits for N's vectors, so the GPU never idles between batches. A batch that fails there is
run again through the path above (split, isolate, fall back). The CPU path is unchanged.

    pool = EncoderPool(encoders, max_batch=32, max_wait_ms=5, max_queue=1024)
    pool.start()                       # warms one batch per worker in its thread
    vector = await pool.encode(pixels)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from app.engine.preprocess import Pixels, PreprocessSpec, stack
from app.errors import EncoderFailed, Overloaded

logger = logging.getLogger(__name__)

# How often idle workers look at the stop flag and the supervisor looks at the workers.
_POLL_S = 0.05
# A worker that keeps dying is restarted with growing pauses, up to this one.
_MAX_RESTART_DELAY_S = 30.0


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
class _Job:
    pixels: Pixels
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)

    def abandoned(self) -> bool:
        # Done before we resolved it: cancelled by a caller that went away or timed out.
        return self.future.done()


@dataclass
class _Worker:
    """One device: its model copy, its current thread and what it holds right now."""

    encoder: Encoder
    device: str
    thread: threading.Thread | None = None
    warm: bool = False
    in_flight: list[_Job] = field(default_factory=list)
    restarts: int = 0
    next_start_at: float = 0.0
    # The pipeline's stager and worker threads both change in_flight.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, jobs: list[_Job]) -> None:
        with self.lock:
            self.in_flight = [*self.in_flight, *jobs]

    def release(self, jobs: list[_Job]) -> None:
        done = {id(job) for job in jobs}
        with self.lock:
            self.in_flight = [job for job in self.in_flight if id(job) not in done]


@dataclass
class _Batch:
    """A batch in the pipeline: staged (or failed to), then launched."""

    jobs: list[_Job]
    handle: Any = None  # what stage, then launch, returned
    error: Exception | None = None
    started: float = field(default_factory=time.perf_counter)


class EncoderPool:
    """Dynamic batching over one or more model copies, with supervised workers."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int = 1024,
        job_timeout_s: float = 60.0,
        events: PoolEvents | None = None,
        pipeline: bool | None = None,
    ) -> None:
        """`pipeline`: None lets each encoder say (`pipelined`: CUDA); True forces it on an
        encoder that has the three steps (tests run it on the CPU); False turns it off."""
        if not encoders:
            raise ValueError("an encoder pool needs at least one encoder")
        self._pipeline = pipeline
        self._workers = [_Worker(encoder, encoder.name) for encoder in encoders]
        self._spec = encoders[0].spec
        self._dim = encoders[0].dim
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._job_timeout_s = job_timeout_s
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self._events = events or PoolEvents()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def spec(self) -> PreprocessSpec:
        return self._spec

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def devices(self) -> list[str]:
        return [worker.device for worker in self._workers]

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def workers_ready(self) -> int:
        """Workers whose thread is alive and whose model is warm."""
        return sum(1 for worker in self._workers if _is_up(worker))

    @property
    def ready(self) -> bool:
        """Every worker is up: `/readyz` is 503 while one is loading, warming or restarting."""
        return self.workers_ready == len(self._workers)

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self._workers)

    def start(self) -> None:
        """Start every worker (each warms up first) and the supervisor that restarts them."""
        for worker in self._workers:
            self._start_worker(worker)
        self._supervisor = threading.Thread(
            target=self._supervise, name="encoder-supervisor", daemon=True
        )
        self._supervisor.start()

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready and time.monotonic() < deadline:
            time.sleep(_POLL_S / 5)
        return self.ready

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        threads = [worker.thread for worker in self._workers] + [self._supervisor]
        for thread in threads:
            if thread is not None:
                thread.join(timeout_s)
        # Whatever is still queued will never run: tell its callers now.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            _settle(job, error=_shutting_down())

    async def encode(self, pixels: Pixels) -> np.ndarray:
        """The unit vector of one preprocessed image, computed in some batch."""
        loop = asyncio.get_running_loop()
        job = _Job(pixels=pixels, future=loop.create_future(), loop=loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded("the image encoder queue is full; retry shortly") from None
        try:
            # wait_for cancels the future on timeout, which marks the job abandoned.
            return await asyncio.wait_for(job.future, self._job_timeout_s)
        except TimeoutError:
            raise Overloaded(
                f"the image encoder did not answer within {self._job_timeout_s:g} s",
                retry_after_s=5,
                code="encoder_timeout",
            ) from None

    # Workers and their supervisor

    def _start_worker(self, worker: _Worker) -> None:
        worker.thread = threading.Thread(
            target=self._serve, args=(worker,), name=f"encoder-{worker.device}", daemon=True
        )
        worker.thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(_POLL_S):
            for worker in self._workers:
                if worker.thread is not None and not worker.thread.is_alive():
                    self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        if time.monotonic() < worker.next_start_at:
            return
        # The dead thread failed its own in-flight jobs; this catches what it could not.
        for job in worker.in_flight:
            _settle(job, error=EncoderFailed("the image encoder worker crashed"))
        worker.in_flight = []
        worker.restarts += 1
        delay = min(_MAX_RESTART_DELAY_S, 0.1 * 2 ** min(worker.restarts, 10))
        worker.next_start_at = time.monotonic() + delay
        logger.warning(
            "restarting encoder worker",
            extra={"device": worker.device, "restarts": worker.restarts},
        )
        self._events.worker_restarted(worker.device)
        self._start_worker(worker)

    def _serve(self, worker: _Worker) -> None:
        try:
            worker.encoder.warm_up()
            worker.warm = True
            pipelined = self._pipelined(worker.encoder)
            if pipelined is not None:
                self._serve_pipelined(worker, pipelined)
                return
            while not self._stopping.is_set():
                batch = self._collect()
                if not batch:
                    continue
                worker.in_flight = batch
                self._encode_batch(worker, batch)
                worker.in_flight = []
        except BaseException:
            # Not re-raised: the thread ends here and the supervisor replaces it.
            worker.warm = False
            logger.exception("encoder worker died", extra={"device": worker.device})
            for job in worker.in_flight:
                _settle(job, error=EncoderFailed("the image encoder worker crashed"))
            worker.in_flight = []

    def _pipelined(self, encoder: Encoder) -> PipelinedEncoder | None:
        if self._pipeline is False or not isinstance(encoder, PipelinedEncoder):
            return None
        return encoder if self._pipeline or encoder.pipelined else None

    # The CUDA pipeline: stager thread -> staged queue -> this thread (launch, collect)

    def _serve_pipelined(self, worker: _Worker, encoder: PipelinedEncoder) -> None:
        # One batch staged ahead: batch N+1 copies while N computes, and no more is held
        # back from the other workers than that.
        staged: queue.Queue[_Batch] = queue.Queue(maxsize=1)
        finished = threading.Event()
        stager = threading.Thread(
            target=self._stage_batches,
            args=(worker, encoder, staged, finished),
            name=f"encoder-stage-{worker.device}",
            daemon=True,
        )
        stager.start()
        pending: _Batch | None = None
        try:
            while not self._stopping.is_set():
                if not stager.is_alive():
                    raise RuntimeError("the encoder's stager thread died")
                try:
                    # With a batch on the GPU, only take one that is ready now; otherwise
                    # collect the running one first rather than keep its callers waiting.
                    batch = staged.get_nowait() if pending else staged.get(timeout=_POLL_S)
                except queue.Empty:
                    if pending is not None:
                        self._finish(worker, encoder, pending)
                        pending = None
                    continue
                launched = self._launch(worker, encoder, batch)
                if pending is not None:
                    self._finish(worker, encoder, pending)
                pending = launched
            if pending is not None:
                self._finish(worker, encoder, pending)
        finally:
            finished.set()
            stager.join(5.0)
            # Shutting down: a staged batch that will not run is answered now.
            with contextlib.suppress(queue.Empty):
                left = staged.get_nowait()
                for job in left.jobs:
                    _settle(job, error=_shutting_down())
                worker.release(left.jobs)

    def _stage_batches(
        self,
        worker: _Worker,
        encoder: PipelinedEncoder,
        staged: queue.Queue[_Batch],
        finished: threading.Event,
    ) -> None:
        try:
            self._stage_until_finished(worker, encoder, staged, finished)
        except BaseException:
            # The worker thread sees this thread gone, fails what it held and is replaced.
            logger.exception("encoder stager died", extra={"device": worker.device})

    def _stage_until_finished(
        self,
        worker: _Worker,
        encoder: PipelinedEncoder,
        staged: queue.Queue[_Batch],
        finished: threading.Event,
    ) -> None:
        while not (self._stopping.is_set() or finished.is_set()):
            jobs = self._collect()
            live = [job for job in jobs if not job.abandoned()]
            if len(live) < len(jobs):
                self._events.dropped(len(jobs) - len(live))
            if not live:
                continue
            worker.hold(live)
            batch = _Batch(live)
            try:
                batch.handle = encoder.stage(stack([job.pixels for job in live]))
            except Exception as exc:
                batch.error = exc  # the worker thread runs it the careful way
            while True:
                try:
                    staged.put(batch, timeout=_POLL_S)
                    break
                except queue.Full:
                    if self._stopping.is_set() or finished.is_set():
                        for job in live:
                            _settle(job, error=_shutting_down())
                        worker.release(live)
                        return

    def _launch(self, worker: _Worker, encoder: PipelinedEncoder, batch: _Batch) -> _Batch | None:
        """Queue `batch` on the device; a failure reruns it the careful way (None then)."""
        if batch.error is None:
            try:
                batch.started = time.perf_counter()
                batch.handle = encoder.launch(batch.handle)
                return batch
            except Exception as exc:
                batch.error = exc
        self._rerun(worker, batch)
        return None

    def _finish(self, worker: _Worker, encoder: PipelinedEncoder, batch: _Batch) -> None:
        try:
            vectors = encoder.collect(batch.handle)
        except Exception as exc:
            batch.error = exc
            self._rerun(worker, batch)
            return
        finished = time.perf_counter()
        for job, vector in zip(batch.jobs, vectors, strict=True):
            _settle(job, result=vector)
        worker.release(batch.jobs)
        self._events.batch(
            BatchReport(
                device=worker.device,
                size=len(batch.jobs),
                queue_wait_s=[batch.started - job.queued_at for job in batch.jobs],
                encode_s=finished - batch.started,
            )
        )

    def _rerun(self, worker: _Worker, batch: _Batch) -> None:
        """A batch that failed in the pipeline goes through `_encode_group`: on OOM that
        splits it or falls back to the CPU, on a bad image it isolates that one."""
        encoder = worker.encoder
        if batch.error is not None and encoder.is_out_of_memory(batch.error):
            encoder.release_memory()
        else:
            logger.warning(
                "pipelined encoder batch failed; running it again step by step",
                extra={
                    "device": worker.device,
                    "size": len(batch.jobs),
                    "error": repr(batch.error),
                },
            )
        live = [job for job in batch.jobs if not job.abandoned()]
        if live:
            self._encode_group(worker, live)
        worker.release(batch.jobs)

    def _collect(self) -> list[_Job]:
        try:
            first = self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.perf_counter() + self._max_wait_s
        while len(batch) < self._max_batch:
            remaining = deadline - time.perf_counter()
            try:
                if remaining > 0:
                    batch.append(self._queue.get(timeout=remaining))
                else:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _encode_batch(self, worker: _Worker, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.abandoned()]
        if len(live) < len(batch):
            self._events.dropped(len(batch) - len(live))
        if live:
            self._encode_group(worker, live)

    def _encode_group(self, worker: _Worker, jobs: list[_Job]) -> None:
        """Run `jobs` through the model and settle each; split on OOM, isolate on failure."""
        encoder = worker.encoder
        started = time.perf_counter()
        try:
            vectors = encoder.encode(stack([job.pixels for job in jobs]))
        except Exception as exc:
            if encoder.is_out_of_memory(exc):
                self._recover_from_oom(worker, jobs)
            elif len(jobs) > 1:
                logger.warning(
                    "encoder batch failed; retrying its images one by one",
                    extra={"device": worker.device, "size": len(jobs), "error": repr(exc)},
                )
                for job in jobs:
                    self._encode_group(worker, [job])
            else:
                logger.exception("encoder failed on one image", extra={"device": worker.device})
                # The cause is in the log line above; the client gets no internal text.
                _settle(jobs[0], error=EncoderFailed("the image encoder failed on this image"))
            return
        finished = time.perf_counter()
        for job, vector in zip(jobs, vectors, strict=True):
            _settle(job, result=vector)
        self._events.batch(
            BatchReport(
                device=worker.device,
                size=len(jobs),
                queue_wait_s=[started - job.queued_at for job in jobs],
                encode_s=finished - started,
            )
        )

    def _recover_from_oom(self, worker: _Worker, jobs: list[_Job]) -> None:
        encoder = worker.encoder
        encoder.release_memory()
        if len(jobs) > 1:
            half = len(jobs) // 2
            logger.warning(
                "encoder out of memory; splitting the batch",
                extra={"device": worker.device, "size": len(jobs)},
            )
            self._encode_group(worker, jobs[:half])
            self._encode_group(worker, jobs[half:])
            return
        if encoder.fall_back_to_cpu():
            logger.error(
                "encoder out of memory on a single image; this worker now runs on the CPU",
                extra={"device": worker.device},
            )
            self._events.cpu_fallback(worker.device)
            self._encode_group(worker, jobs)
            return
        _settle(jobs[0], error=EncoderFailed("the image encoder ran out of memory"))


def _shutting_down() -> Overloaded:
    return Overloaded("the image encoder is shutting down", retry_after_s=1)


def _is_up(worker: _Worker) -> bool:
    return worker.warm and worker.thread is not None and worker.thread.is_alive()


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
