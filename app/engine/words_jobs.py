"""What the words pool (`workers.py`) and its models share: the model protocols (a batch
model, a model read in steps), the events a pool reports, and the records of a queued image
and of what one worker holds."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from app.engine.deadline import Deadline

In = TypeVar("In")
Out = TypeVar("Out")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)


class BatchModel(Protocol[In_contra, Out_co]):
    """What a worker needs from a model copy (see `OcrModel`, `Captioner`)."""

    def run(self, items: Sequence[In_contra]) -> Sequence[Out_co | BaseException]:
        """One result, or the exception it raised, per item, in order."""
        ...

    def warm_up(self) -> None: ...


class SteppedModel(Protocol[In_contra, Out_co]):
    """A model that can also read one item as steps: each `next()` runs one, the return
    value is the result (see `OcrModel.begin`)."""

    def begin(self, item: In_contra, deadline: Deadline) -> Generator[Any, None, Out_co]:
        """Each step may yield a handle whose `terminate` the pool sets to stop that
        item's running step for a neighbour's (ONNX Runtime's `RunOptions`); None else."""
        ...


class WorkerEvents:
    """What a pool tells the metrics; the default tells nobody."""

    def ran(self, size: int, seconds: float, queue_wait_s: list[float]) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass

    def restarted(self) -> None:
        pass


@dataclass(eq=False)
class Job(Generic[In, Out]):
    item: In
    deadline: Deadline = field(default_factory=lambda: Deadline(float("inf")))
    future: Future[Out] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    client: str = ""
    steps: Generator[Any, None, Out] | None = None  # once begun (a stepped model)
    interrupt: Any = None  # what the model yielded to stop its running step with
    step_started: float = 0.0
    worker: int | None = None  # the worker that began it, and the only one to step it
    started_at: float = 0.0
    abandoned: bool = False  # its caller has gone (timed out or left)


@dataclass(eq=False)
class Holding(Generic[In, Out]):
    """What one worker holds, so that its death fails exactly these images."""

    taken: list[tuple[str, Job[In, Out]]] = field(default_factory=list)  # step not done
    begun: set[Job[In, Out]] = field(default_factory=set)  # stepped, begun, not finished
