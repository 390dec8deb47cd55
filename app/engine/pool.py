"""The encoder pool: one supervised worker thread per device, each batching images dynamically.

Every queued image carries its own future. All workers take from one bounded queue, so load
spreads over devices by itself (the images of one request may land in several batches and
on several devices), and a full queue fails fast with `Overloaded` instead of growing
latency without bound. How a worker batches and runs its images is its loop's job:
`cpu_loop.py` (collect, run, split on OOM, isolate a bad image, fall back to the CPU) and,
on CUDA (an encoder whose `pipelined` is true), `cuda_loop.py` (copy batch N+1 while N
computes). This module supervises the workers:
- a worker thread that dies (any BaseException) fails its in-flight images at once and a
  supervisor thread starts a replacement, which warms up before it takes work;
- every caller waits with a deadline (`job_timeout_s`), so nothing hangs forever.

    pool = EncoderPool(encoders, max_batch=32, max_wait_ms=5, max_queue=1024)
    pool.start()                       # warms one batch per worker in its thread
    vector = await pool.encode(pixels)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Sequence

import numpy as np

from app.engine.cpu_loop import CpuLoop
from app.engine.cuda_loop import CudaLoop
from app.engine.pool_jobs import (
    Encoder,
    Job,
    PipelinedEncoder,
    PoolEvents,
    Worker,
    settle,
    shutting_down,
)
from app.engine.preprocess import Pixels, PreprocessSpec
from app.engine.supervisor import POLL_S, Supervisor
from app.errors import EncoderFailed, Overloaded

logger = logging.getLogger(__name__)

# A worker that keeps dying is restarted with growing pauses, up to this one.
_MAX_RESTART_DELAY_S = 30.0


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
        self._workers = [Worker(encoder, encoder.name) for encoder in encoders]
        self._spec = encoders[0].spec
        self._dim = encoders[0].dim
        self._job_timeout_s = job_timeout_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._events = events or PoolEvents()
        self._threads = Supervisor()
        self._stopping = self._threads.stopping
        self._cpu = CpuLoop(
            self._queue,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1000,
            events=self._events,
            stopping=self._stopping,
        )
        self._cuda = CudaLoop(self._cpu)

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
        return sum(1 for worker in self._workers if worker.is_up())

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
        self._threads.every(self._supervise, name="encoder-supervisor")

    def wait_ready(self, timeout_s: float) -> bool:
        return self._threads.wait_until(lambda: self.ready, timeout_s, poll_s=POLL_S / 5)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._threads.stop(timeout_s)
        # Whatever is still queued will never run: tell its callers now.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            settle(job, error=shutting_down())

    async def encode(self, pixels: Pixels) -> np.ndarray:
        """The unit vector of one preprocessed image, computed in some batch."""
        loop = asyncio.get_running_loop()
        job = Job(pixels=pixels, future=loop.create_future(), loop=loop)
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

    def _start_worker(self, worker: Worker) -> None:
        # Only `start` and then the supervisor's tick start workers: never two at once.
        worker.thread = self._threads.spawn(self._serve, worker, name=f"encoder-{worker.device}")

    def _supervise(self) -> None:
        for worker in self._workers:
            if worker.thread is not None and not worker.thread.is_alive():
                self._replace(worker)

    def _replace(self, worker: Worker) -> None:
        if time.monotonic() < worker.next_start_at:
            return
        # The dead thread failed its own in-flight jobs; this catches what it could not.
        _fail_in_flight(worker)
        worker.restarts += 1
        delay = min(_MAX_RESTART_DELAY_S, 0.1 * 2 ** min(worker.restarts, 10))
        worker.next_start_at = time.monotonic() + delay
        logger.warning(
            "restarting encoder worker",
            extra={"device": worker.device, "restarts": worker.restarts},
        )
        self._events.worker_restarted(worker.device)
        self._start_worker(worker)

    def _serve(self, worker: Worker) -> None:
        try:
            worker.encoder.warm_up()
            worker.warm = True
            pipelined = self._pipelined(worker.encoder)
            if pipelined is not None:
                self._cuda.serve(worker, pipelined)
            else:
                self._cpu.serve(worker)
        except BaseException:
            # Not re-raised: the thread ends here and the supervisor replaces it.
            worker.warm = False
            logger.exception("encoder worker died", extra={"device": worker.device})
            _fail_in_flight(worker)

    def _pipelined(self, encoder: Encoder) -> PipelinedEncoder | None:
        if self._pipeline is False or not isinstance(encoder, PipelinedEncoder):
            return None
        return encoder if self._pipeline or encoder.pipelined else None


def _fail_in_flight(worker: Worker) -> None:
    for job in worker.in_flight:
        settle(job, error=EncoderFailed("the image encoder worker crashed"))
    worker.in_flight = []
