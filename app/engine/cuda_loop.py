"""The encoder pool's pipelined loop for CUDA: copy batch N+1 while batch N computes.

On CUDA (an encoder whose `pipelined` is true) each worker is a pipeline of two threads:
a stager collects batch N+1, stacks it, pins it and starts its copy on the encoder's copy
stream while the worker thread runs batch N; the worker queues N+1 on the GPU before it
waits for N's vectors, so the GPU never idles between batches. A batch that fails here is
run again through the plain loop (`CpuLoop.encode_group`: split, isolate, fall back).

    stager thread -> staged queue (one batch) -> worker thread (launch, collect)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from app.engine.cpu_loop import CpuLoop
from app.engine.pool_jobs import Batch, PipelinedEncoder, Worker, settle, shutting_down
from app.engine.preprocess import stack
from app.engine.supervisor import POLL_S

logger = logging.getLogger(__name__)


class CudaLoop:
    """The two-thread pipeline of one worker; collects and reruns through `cpu`."""

    def __init__(self, cpu: CpuLoop) -> None:
        self._cpu = cpu
        self._stopping = cpu.stopping

    def serve(self, worker: Worker, encoder: PipelinedEncoder) -> None:
        """Run batches on `worker` until the pool stops (or its stager dies: then raises)."""
        # One batch staged ahead: batch N+1 copies while N computes, and no more is held
        # back from the other workers than that.
        staged: queue.Queue[Batch] = queue.Queue(maxsize=1)
        finished = threading.Event()
        stager = threading.Thread(
            target=self._stage_batches,
            args=(worker, encoder, staged, finished),
            name=f"encoder-stage-{worker.device}",
            daemon=True,
        )
        stager.start()
        pending: Batch | None = None
        try:
            while not self._stopping.is_set():
                if not stager.is_alive():
                    raise RuntimeError("the encoder's stager thread died")
                try:
                    # With a batch on the GPU, only take one that is ready now; otherwise
                    # collect the running one first rather than keep its callers waiting.
                    batch = staged.get_nowait() if pending else staged.get(timeout=POLL_S)
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
                    settle(job, error=shutting_down())
                worker.release(left.jobs)

    def _stage_batches(
        self,
        worker: Worker,
        encoder: PipelinedEncoder,
        staged: queue.Queue[Batch],
        finished: threading.Event,
    ) -> None:
        try:
            while not (self._stopping.is_set() or finished.is_set()):
                live = self._cpu.live(self._cpu.collect())
                if not live:
                    continue
                worker.hold(live)
                batch = Batch(live)
                try:
                    batch.handle = encoder.stage(stack([job.pixels for job in live]))
                except Exception as exc:
                    batch.error = exc  # the worker thread runs it the careful way
                while True:
                    try:
                        staged.put(batch, timeout=POLL_S)
                        break
                    except queue.Full:
                        if self._stopping.is_set() or finished.is_set():
                            for job in live:
                                settle(job, error=shutting_down())
                            worker.release(live)
                            return
        except BaseException:
            # The worker thread sees this thread gone, fails what it held and is replaced.
            logger.exception("encoder stager died", extra={"device": worker.device})

    def _launch(self, worker: Worker, encoder: PipelinedEncoder, batch: Batch) -> Batch | None:
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

    def _finish(self, worker: Worker, encoder: PipelinedEncoder, batch: Batch) -> None:
        try:
            vectors = encoder.collect(batch.handle)
        except Exception as exc:
            batch.error = exc
            self._rerun(worker, batch)
            return
        self._cpu.answer(worker, batch.jobs, vectors, batch.started)
        worker.release(batch.jobs)

    def _rerun(self, worker: Worker, batch: Batch) -> None:
        """A batch that failed in the pipeline goes through `encode_group`: on OOM that
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
            self._cpu.encode_group(worker, live)
        worker.release(batch.jobs)
