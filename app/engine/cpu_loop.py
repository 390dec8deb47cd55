"""The encoder pool's plain loop: collect a batch, run it, answer each image.

A worker takes the first waiting image, then keeps taking until it has `max_batch` images
or `max_wait_ms` have passed since the first, drops the images whose caller has gone, runs
the batch and resolves each future on its caller's event loop.

Faults stay small:
- a batch the model fails on is retried image by image, so only the bad image fails;
- CUDA out of memory frees the cache and splits the batch; if one image still does not fit,
  that worker moves its model to the CPU for good and says so (log + event).

The CUDA pipeline (`cuda_loop.py`) collects through this loop and sends the batches that
fail there back through `encode_group`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from app.engine.pool_jobs import BatchReport, Job, PoolEvents, Worker, settle
from app.engine.preprocess import stack
from app.engine.supervisor import POLL_S
from app.errors import EncoderFailed

logger = logging.getLogger(__name__)


class CpuLoop:
    """Batches from the pool's one queue, run on a worker's encoder the careful way."""

    def __init__(
        self,
        jobs: queue.Queue[Job],
        *,
        max_batch: int,
        max_wait_s: float,
        events: PoolEvents,
        stopping: threading.Event,
    ) -> None:
        self.events = events
        self.stopping = stopping
        self._queue = jobs
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s

    def serve(self, worker: Worker) -> None:
        """Run batches on `worker` until the pool stops."""
        while not self.stopping.is_set():
            batch = self.collect()
            if not batch:
                continue
            worker.in_flight = batch
            self._encode_batch(worker, batch)
            worker.in_flight = []

    def collect(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=POLL_S)
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

    def live(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose caller still waits; the others are counted as dropped."""
        live = [job for job in jobs if not job.abandoned()]
        if len(live) < len(jobs):
            self.events.dropped(len(jobs) - len(live))
        return live

    def _encode_batch(self, worker: Worker, batch: list[Job]) -> None:
        live = self.live(batch)
        if live:
            self.encode_group(worker, live)

    def encode_group(self, worker: Worker, jobs: list[Job]) -> None:
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
                    self.encode_group(worker, [job])
            else:
                logger.exception("encoder failed on one image", extra={"device": worker.device})
                # The cause is in the log line above; the client gets no internal text.
                settle(jobs[0], error=EncoderFailed("the image encoder failed on this image"))
            return
        self.answer(worker, jobs, vectors, started)

    def answer(self, worker: Worker, jobs: list[Job], vectors: np.ndarray, started: float) -> None:
        """Settle each job with its vector and report the model call that made them."""
        finished = time.perf_counter()
        for job, vector in zip(jobs, vectors, strict=True):
            settle(job, result=vector)
        self.events.batch(
            BatchReport(
                device=worker.device,
                size=len(jobs),
                queue_wait_s=[started - job.queued_at for job in jobs],
                encode_s=finished - started,
            )
        )

    def _recover_from_oom(self, worker: Worker, jobs: list[Job]) -> None:
        encoder = worker.encoder
        encoder.release_memory()
        if len(jobs) > 1:
            half = len(jobs) // 2
            logger.warning(
                "encoder out of memory; splitting the batch",
                extra={"device": worker.device, "size": len(jobs)},
            )
            self.encode_group(worker, jobs[:half])
            self.encode_group(worker, jobs[half:])
            return
        if encoder.fall_back_to_cpu():
            logger.error(
                "encoder out of memory on a single image; this worker now runs on the CPU",
                extra={"device": worker.device},
            )
            self.events.cpu_fallback(worker.device)
            self.encode_group(worker, jobs)
            return
        settle(jobs[0], error=EncoderFailed("the image encoder ran out of memory"))
