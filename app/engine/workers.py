"""A pool of model workers for the words beside the vector: OCR and captions.

The same discipline as the CLIP pool (`pool.py`), in a smaller form: one bounded queue,
each queued item with its own future; a full queue fails fast (`Overloaded`); every caller
waits with a deadline (`EngineTimeout`); a model call that fails on one item fails only that
item's request; the work runs in threads of its own, never on the event loop. Each worker
loads and warms its own model copy in its thread; `ready` once all are warm.

    pool = WorkerPool("ocr", load=OcrModel.load, workers=2, max_batch=1, max_queue=64,
                      timeout_s=30, events=events)
    pool.start()
    text = await pool.run(item)

A worker takes the first waiting item and whatever else is already queued, up to
`max_batch` (no waiting for more: OCR runs items one by one, a captioner batches them on
the GPU), skips items whose caller has gone, and hands the batch to `model.run`, which
answers one result or one exception per item.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from app.errors import EngineNotReady, EngineTimeout, ModelFailed, Overloaded, ProxyError

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)

_POLL_S = 0.05


class BatchModel(Protocol[In_contra, Out_co]):
    """What a worker needs from a model copy (see `OcrModel`, `Captioner`)."""

    def run(self, items: Sequence[In_contra]) -> Sequence[Out_co | BaseException]:
        """One result, or the exception it raised, per item, in order."""
        ...

    def warm_up(self) -> None: ...


class WorkerEvents:
    """What a pool tells the metrics; the default tells nobody."""

    def ran(self, size: int, seconds: float, queue_wait_s: list[float]) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class _Job(Generic[In, Out]):
    item: In
    future: Future[Out] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


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
        self._queue: queue.Queue[_Job[In, Out]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready_count = 0
        self._lock = threading.Lock()
        self.load_failed = False

    @property
    def ready(self) -> bool:
        return self._ready_count == self._workers

    @property
    def workers_ready(self) -> int:
        return self._ready_count

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self.kind}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready and not self.load_failed and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return self.ready

    async def run(self, item: In) -> Out:
        """The model's answer for `item`, within the pool's deadline."""
        if not self.ready:
            raise EngineNotReady(f"{self.kind} engine")
        job: _Job[In, Out] = _Job(item)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._events.failed("overloaded")
            raise Overloaded(f"the {self.kind} queue is full; retry shortly") from None
        waiting = asyncio.wrap_future(job.future)
        try:
            return await asyncio.wait_for(waiting, self._timeout_s)
        except TimeoutError:
            self._events.failed("timeout")
            raise EngineTimeout(
                f"{self.kind} took longer than {self._timeout_s:g} s on an image"
            ) from None

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
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A caller that timed out or left cancelled its future: skip its image.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(model, live)

    def _run(self, model: BatchModel[In, Out], jobs: list[_Job[In, Out]]) -> None:
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
            if isinstance(result, ProxyError):
                self._events.failed("invalid" if result.status_code < 500 else "failed")
                job.future.set_exception(result)
            elif isinstance(result, BaseException):
                self._events.failed("failed")
                logger.error(
                    "%s failed on one image", self.kind, exc_info=(type(result), result, None)
                )
                error = ModelFailed(f"{self.kind} failed on this image", code=f"{self.kind}_failed")
                error.__cause__ = result
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
