"""The words pool (OCR, captions) replaces a worker thread that dies: the images it held fail
at once with the model's error code (not after the pool's deadline), a new worker loads its
own model copy, and the pool serves the next image. Stand-in models with real threads: the
faults are a `BaseException` out of a model, which nothing below the worker catches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Sequence

import pytest

from app.engine.deadline import Deadline
from app.engine.words_jobs import BatchModel, WorkerEvents
from app.engine.workers import WorkerPool
from app.errors import ModelFailed
from tests.helpers import wait_for
from tests.processes import scaled

# Longer than any answer here takes: an image that waited for it fails as `EngineTimeout`,
# not `ModelFailed` (the pool before this fix let a dead worker's images wait for it).
POOL_DEADLINE_S = 60


class _Killed(BaseException):
    """What kills a worker: not an `Exception`, so no per-image handler takes it."""


class _Events(WorkerEvents):
    def __init__(self) -> None:
        self.restarts = 0

    def restarted(self) -> None:
        self.restarts += 1


class _Batches:
    """Answers each item upper-cased; "die" kills the worker running it."""

    def warm_up(self) -> None:
        pass

    def run(self, items: Sequence[str]) -> list[str | BaseException]:
        if "die" in items:
            raise _Killed
        return [item.upper() for item in items]


class _Steps:
    """Reads each item in steps; "die" kills the worker at its first step; "hold" takes
    steps until `release` is set (begun and held by its worker, while others run)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()

    def warm_up(self) -> None:
        pass

    def run(self, items: Sequence[str]) -> list[str | BaseException]:
        raise AssertionError("a stepped model is run in steps")

    def begin(self, item: str, deadline: Deadline) -> Generator[None, None, str]:
        if item == "die":
            raise _Killed
        yield None
        while item == "hold" and not self.release.is_set():
            self.holding.set()
            yield None  # back in the queue between steps, held by this worker
        return item.upper()


def _pool(
    model: BatchModel[str, str], events: WorkerEvents, loads: list[int]
) -> WorkerPool[str, str]:
    def load() -> BatchModel[str, str]:
        loads.append(1)
        return model

    pool: WorkerPool[str, str] = WorkerPool(
        "ocr",
        load,
        timeout_s=POOL_DEADLINE_S,
        events=events,
    )
    pool.start()
    assert pool.wait_ready(scaled(30))
    return pool


def _assert_replaced(pool: WorkerPool[str, str], events: _Events, loads: list[int]) -> None:
    asyncio.run(wait_for(lambda: pool.ready, timeout_s=30))
    assert pool.restarts == 1 and events.restarts == 1
    assert len(loads) == 2  # the replacement loaded its own copy
    assert asyncio.run(pool.run("after")) == "AFTER"


def test_a_worker_killed_in_a_batch_fails_its_image_at_once_and_is_replaced() -> None:
    events, loads = _Events(), list[int]()
    pool = _pool(_Batches(), events, loads)
    try:
        assert asyncio.run(pool.run("before")) == "BEFORE"

        with pytest.raises(ModelFailed) as failed:
            asyncio.run(pool.run("die"))

        assert failed.value.code == "ocr_failed"
        _assert_replaced(pool, events, loads)
    finally:
        pool.stop()


def test_a_stepping_worker_killed_fails_every_image_it_held_and_is_replaced() -> None:
    events, loads = _Events(), list[int]()
    model = _Steps()
    pool = _pool(model, events, loads)
    try:

        async def both() -> tuple[str | BaseException, str | BaseException]:
            held = asyncio.ensure_future(pool.run("hold"))
            await wait_for(model.holding.is_set, timeout_s=30)
            dying = asyncio.ensure_future(pool.run("die"))
            return await asyncio.gather(held, dying, return_exceptions=True)

        held, dying = asyncio.run(both())
        model.release.set()

        # Both fail with the model's code, not the pool's deadline: the held image's
        # state lived in the dead worker's model copy.
        assert isinstance(held, ModelFailed) and held.code == "ocr_failed"
        assert isinstance(dying, ModelFailed) and dying.code == "ocr_failed"
        _assert_replaced(pool, events, loads)
        asyncio.run(wait_for(lambda: pool.active_jobs == 0 and pool.queue_depth == 0, 30))
    finally:
        pool.stop()
