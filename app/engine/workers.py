"""A pool of model workers for the words beside the vector: OCR and captions.

The same discipline as the CLIP pool (`pool.py`), in a smaller form, under the same thread
supervision (`supervisor.py`: named threads, a watcher tick, a readiness wait, one stop):
one bounded queue, each queued item with its own future; a full queue fails fast
(`Overloaded`); every caller waits with a deadline (`EngineTimeout`); a model call that
fails on one item fails only that item's request; the work runs in threads of its own,
never on the event loop. Each worker loads and warms its own model copy in its thread;
`ready` once all are warm. A worker thread that dies (a BaseException out of its model, or
a bug) fails the images it held at once, and the watcher starts a replacement with growing
pauses, which loads its own copy again; the pool is not `ready` meanwhile.

    pool = WorkerPool("ocr", load=OcrModel.load, workers=2, max_batch=1, max_queue=64,
                      timeout_s=30, events=events)
    pool.start()
    text = await pool.run(item)

A worker takes the first waiting item and whatever else is already queued, up to
`max_batch` (no waiting for more: OCR runs items one by one, a captioner batches them on
the GPU), skips items whose caller has gone, and hands the batch to `model.run`, which
answers one result or one exception per item.

The queue is shared fairly between clients (`fair_queue.py`: the least-served client goes
next). A model that can cut its work into steps (`words_jobs.SteppedModel`: OCR,
`ocr_steps.py`) is run one step at a time: after each step the image waits its client's
turn again, so a long image interleaves with other clients' images, and one past its
deadline is dropped before its next step (and its running inference ended), which frees
the worker.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic

from app.engine.deadline import Deadline
from app.engine.fair_queue import YIELD_SLACK_S, FairQueue
from app.engine.supervisor import POLL_S, Supervisor
from app.engine.words_jobs import (
    BatchModel,
    Holding,
    In,
    Job,
    Out,
    WorkerEvents,
)
from app.errors import EngineNotReady, EngineTimeout, ModelFailed, Overloaded, ProxyError
from app.observability.tenant import current_client

logger = logging.getLogger(__name__)

# Images a worker has begun and interleaves at once (each holds its decoded pixels).
_ACTIVE_PER_WORKER = 4
# A worker that keeps dying is restarted with growing pauses, up to this one.
_MAX_RESTART_DELAY_S = 30.0
# `Job.worker` of a job whose worker died: no worker steps it again, any may drop it.
_ORPHANED = -1


class WorkerPool(Generic[In, Out]):
    """Threads, each with its own model copy, serving one bounded queue."""

    def __init__(
        self,
        kind: str,
        load: Callable[[], BatchModel[In, Out]],
        *,
        workers: int = 1,
        max_batch: int = 1,
        max_queue: int = 64,
        timeout_s: float = 30.0,
        events: WorkerEvents | None = None,
    ) -> None:
        self.kind = kind
        self._load = load
        self._workers = workers
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        self._events = events or WorkerEvents()
        self._queue: FairQueue[Job[In, Out]] = FairQueue(max_queue)
        self._active = 0  # jobs begun and not finished (holding a worker's time)
        self._running: dict[int, Job[In, Out]] = {}  # the job each stepping worker is in
        self._threads = Supervisor()
        self._stop = self._threads.stopping
        self._ready_count = 0
        self._lock = threading.Lock()
        self.load_failed = False
        self._worker_threads: list[threading.Thread | None] = [None] * workers
        self._next_start_at = [0.0] * workers
        self.restarts = 0

    @property
    def ready(self) -> bool:
        return self._ready_count == self._workers

    @property
    def workers_ready(self) -> int:
        return self._ready_count

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def active_jobs(self) -> int:
        """Images begun and not finished: 0 once every worker is free."""
        return self._active

    def start(self) -> None:
        for index in range(self._workers):
            self._start_worker(index)
        self._threads.every(self._watch, name=f"{self.kind}-watch")

    def _start_worker(self, index: int) -> None:
        # Only `start` and then the watcher's tick start workers: never two at once.
        self._worker_threads[index] = self._threads.spawn(self._work, name=f"{self.kind}-{index}")

    def _watch(self) -> None:
        """Replace a dead worker; while clients wait, preempt a step of one that has used
        clearly more (a long step that began before the others had used anything)."""
        for index, thread in enumerate(self._worker_threads):
            if thread is not None and not thread.is_alive():
                self._replace(index)
        if self._running:
            for client in self._queue.waiting_clients():
                self._preempt_for(client)

    def _replace(self, index: int) -> None:
        # A copy that could not load will not load the second time either (`load_failed`).
        if self.load_failed or self._stop.is_set() or time.monotonic() < self._next_start_at[index]:
            return
        self.restarts += 1
        delay = min(_MAX_RESTART_DELAY_S, 0.1 * 2 ** min(self.restarts, 10))
        self._next_start_at[index] = time.monotonic() + delay
        logger.warning("restarting a %s worker", self.kind, extra={"restarts": self.restarts})
        self._events.restarted()
        self._start_worker(index)

    def stop(self) -> None:
        self._threads.stop(timeout_s=5)

    def wait_ready(self, timeout_s: float) -> bool:
        return self._threads.wait_until(
            lambda: self.ready, timeout_s, give_up=lambda: self.load_failed
        )

    async def run(self, item: In) -> Out:
        """The model's answer for `item`, within the pool's deadline."""
        if self._ready_count == 0:  # one warm worker serves the queue while others (re)load
            raise EngineNotReady(f"{self.kind} engine")
        job: Job[In, Out] = Job(item, Deadline.after(self._timeout_s), client=current_client())
        try:
            self._queue.put(job.client, job)
        except queue.Full:
            self._events.failed("overloaded")
            raise Overloaded(f"the {self.kind} queue is full; retry shortly") from None
        self._preempt_for(job.client)
        waiting = asyncio.wrap_future(job.future)
        try:
            return await asyncio.wait_for(waiting, self._timeout_s)
        except TimeoutError:
            self._events.failed("timeout")
            raise EngineTimeout(
                f"{self.kind} took longer than {self._timeout_s:g} s on an image"
            ) from None
        finally:
            job.abandoned = True  # done, timed out or gone: a worker drops it if still held

    def _preempt_for(self, client: str) -> None:
        """Stop the running step of any client that has used clearly more than `client`
        (counting the step so far): its step runs again after the newcomer's."""
        served = self._queue.served(client)
        now = time.perf_counter()
        with self._lock:
            running = list(self._running.values())
        for job in running:
            if job.client == client or job.interrupt is None:
                continue
            used = self._queue.served(job.client) + (now - job.step_started)
            if used > served + YIELD_SLACK_S:
                job.interrupt.terminate = True

    def _work(self) -> None:
        try:
            model = self._load()
            model.warm_up()
        except Exception:
            logger.exception("could not load the %s model; not ready", self.kind)
            self.load_failed = True
            return
        with self._lock:
            self._ready_count += 1
        holding = Holding[In, Out]()
        try:
            if callable(getattr(model, "begin", None)):
                self._work_in_steps(model, holding)
            else:
                self._work_in_batches(model, holding)
        except BaseException:
            # Not re-raised: the thread ends here and the watcher replaces it.
            logger.exception("a %s worker died", self.kind)
            self._died(holding)

    def _died(self, holding: Holding[In, Out]) -> None:
        """A dead worker's images: its callers are told at once (not ready first, so a
        caller that sees the failure sees the pool down); the steps of those it began lived
        in its model copy, so they are orphaned: any worker drops them unrun (`_step`)."""
        with self._lock:
            self._ready_count -= 1
            self._active -= len(holding.begun)
        for client, _ in holding.taken:
            self._queue.step_done(client, 0.0)
        for job in holding.begun | {job for _, job in holding.taken}:
            if job.steps is not None:
                job.worker = _ORPHANED
            job.abandoned = True
            if not job.future.done():
                job.future.set_exception(
                    ModelFailed(
                        f"the {self.kind} worker stopped on this image", code=f"{self.kind}_failed"
                    )
                )

    def _work_in_batches(self, model: BatchModel[In, Out], holding: Holding[In, Out]) -> None:
        def is_new(job: Job[In, Out]) -> bool:
            return True

        while not self._stop.is_set():
            taken = self._queue.take(lambda job: True, POLL_S, new=is_new)
            if taken is None:
                continue
            batch = holding.taken = [taken]
            while len(batch) < self._max_batch:
                more = self._queue.take(lambda job: True, 0, new=is_new)
                if more is None:
                    break
                batch.append(more)
            started = time.perf_counter()
            # A caller that timed out or left cancelled its future: skip its image.
            live = [job for _, job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(model, live)
            share = (time.perf_counter() - started) / len(batch)
            holding.taken = []
            for client, _ in batch:
                self._queue.step_done(client, share)

    def _work_in_steps(self, model: Any, holding: Holding[In, Out]) -> None:
        me = threading.get_ident()

        def runnable(job: Job[In, Out]) -> bool:
            return job.worker in (me, _ORPHANED) or (
                job.worker is None and len(holding.begun) < _ACTIVE_PER_WORKER
            )

        def is_new(job: Job[In, Out]) -> bool:
            return job.worker is None

        def to_drop(job: Job[In, Out]) -> bool:
            return job.steps is not None and (job.abandoned or job.deadline.expired())

        while not self._stop.is_set():
            taken = self._queue.take(runnable, POLL_S, new=is_new, urgent=to_drop)
            if taken is None:
                continue
            holding.taken = [taken]
            client, job = taken
            started = job.step_started = time.perf_counter()
            begun = job.worker is None
            with self._lock:
                self._running[me] = job
            try:
                more = self._step(model, job, me)
            finally:
                with self._lock:
                    del self._running[me]
            if begun and job.worker == me:
                holding.begun.add(job)
                with self._lock:
                    self._active += 1
            if not more and job.worker == me:
                holding.begun.discard(job)
                with self._lock:
                    self._active -= 1
            holding.taken = []
            self._queue.step_done(client, time.perf_counter() - started, job if more else None)

    def _step(self, model: Any, job: Job[In, Out], me: int) -> bool:
        """One step of `job`; True when it has more."""
        if job.steps is None:
            if not job.future.set_running_or_notify_cancel():
                return False  # its caller gave up while it waited
            if job.abandoned or job.deadline.expired():
                job.future.set_exception(EngineTimeout(f"{self.kind} deadline passed"))
                return False
            job.started_at = time.perf_counter()
            job.worker = me
            job.steps = model.begin(job.item, job.deadline)
        elif job.abandoned or job.deadline.expired():
            job.steps.close()  # ends its inference timer; the pixels are let go
            self._events.failed("stopped")
            if not job.future.done():
                job.future.set_exception(EngineTimeout(f"{self.kind} deadline passed"))
            return False
        assert job.steps is not None
        try:
            handle = next(job.steps)
            if handle is not None:
                job.interrupt = handle
            return True
        except StopIteration as done:
            self._events.ran(
                1, time.perf_counter() - job.started_at, [job.started_at - job.queued_at]
            )
            job.future.set_result(done.value)
        except EngineTimeout as exc:  # stopped mid-inference at the deadline (ocr_steps.py)
            self._events.failed("stopped")
            job.future.set_exception(exc)
        except Exception as exc:
            self._settle(job, exc)
        return False

    def _run(self, model: BatchModel[In, Out], jobs: list[Job[In, Out]]) -> None:
        started = time.perf_counter()
        waits = [started - job.queued_at for job in jobs]
        try:
            results = list(model.run([job.item for job in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"{len(results)} results for {len(jobs)} items")
        except Exception as exc:
            results = [exc] * len(jobs)
        self._events.ran(len(jobs), time.perf_counter() - started, waits)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                self._settle(job, result)
            else:
                job.future.set_result(result)

    def _settle(self, job: Job[In, Out], result: BaseException) -> None:
        """A job's failure: the client's own fault as it is, the model's as `ModelFailed`."""
        if isinstance(result, ProxyError):
            self._events.failed("invalid" if result.status_code < 500 else "failed")
            job.future.set_exception(result)
        else:
            self._events.failed("failed")
            logger.error("%s failed on one image", self.kind, exc_info=(type(result), result, None))
            error = ModelFailed(f"{self.kind} failed on this image", code=f"{self.kind}_failed")
            error.__cause__ = result
            job.future.set_exception(error)
