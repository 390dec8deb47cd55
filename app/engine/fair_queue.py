"""A bounded queue shared fairly between clients: the client that has used the least work
time so far goes next, so one client's images cannot take the pool while others wait.

Each client (`app.observability.tenant.current_client()`: its key's identity, else its
address) has its own FIFO. `take` picks, among clients with an item a worker may run, the
one with the least service time accumulated while it had items queued (`step_done` adds to
it; a client with nothing left is forgotten shortly after, back to zero). Items cut into steps
come back with `step_done(again=...)` after each step and wait their client's turn again,
so a long image interleaves with others instead of holding its worker; and a client that
has used clearly more than one with a step running waits for that step rather than run
beside it (the cores are what is shared). Thread-safe.

    queue = FairQueue(max_items=64)
    queue.put("client-a", item)               # raises queue.Full past max_items
    client, item = queue.take(accept, timeout=0.05, new=is_new)   # or None
    queue.step_done(client, seconds, again=item)   # again=None: the item is finished
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# How much more work time than a client with a step running another client may have used
# and still run beside it (clients with short images run side by side; a long one waits).
YIELD_SLACK_S = 0.25
# How long a client that has just finished still counts as active for that rule: a client
# sending one short image after another gets its next one in before a long image resumes
# (and is preempted again); then its account is forgotten (back to zero).
NEIGHBOUR_GRACE_S = 0.3


@dataclass
class _Client(Generic[T]):
    items: deque[T] = field(default_factory=deque)
    served_s: float = 0.0
    running: int = 0
    arrived: int = 0  # the order clients arrived in: ties go to the earlier
    idle_since: float | None = None  # nothing queued or running since then


class FairQueue(Generic[T]):
    def __init__(self, max_items: int) -> None:
        self._max_items = max_items
        self._clients: dict[str, _Client[T]] = {}
        self._waiting_new = 0  # items put and not yet taken the first time
        self._arrivals = 0
        self._changed = threading.Condition()

    def qsize(self) -> int:
        with self._changed:
            return sum(len(client.items) for client in self._clients.values())

    def put(self, client: str, item: T) -> None:
        """A new item; `queue.Full` when `max_items` new ones already wait."""
        with self._changed:
            if self._waiting_new >= self._max_items:
                raise queue.Full
            self._waiting_new += 1
            entry = self._clients.get(client)
            if entry is None:
                self._arrivals += 1
                entry = self._clients[client] = _Client(arrived=self._arrivals)
            entry.idle_since = None
            entry.items.append(item)
            self._changed.notify_all()

    def take(
        self,
        accept: Callable[[T], bool],
        timeout: float,
        *,
        new: Callable[[T], bool],
        urgent: Callable[[T], bool] = lambda item: False,
    ) -> tuple[str, T] | None:
        """The least-served client's first item that `accept` allows (`new` tells an item
        never taken before; an `urgent` one, such as one past its deadline that only needs
        dropping, goes first whoever sent it); None after `timeout`. Every take ends with
        `step_done`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._pick_urgent(accept, urgent) or self._pick(accept)
                if found is not None:
                    if new(found[1]):
                        self._waiting_new -= 1
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def waiting_clients(self) -> list[str]:
        """Clients with an item queued (not running)."""
        with self._changed:
            return [name for name, entry in self._clients.items() if entry.items]

    def served(self, client: str) -> float:
        """Work time `client` has used while it had items (0 for one with none)."""
        with self._changed:
            entry = self._clients.get(client)
            return entry.served_s if entry is not None else 0.0

    def step_done(self, client: str, seconds: float, again: T | None = None) -> None:
        """One step of `client`'s item took `seconds`; `again`: it has more (queued at once,
        never refused); the client's account is forgotten `NEIGHBOUR_GRACE_S` after it has
        nothing left."""
        with self._changed:
            entry = self._clients[client]
            entry.running -= 1
            entry.served_s += seconds
            if again is not None:
                entry.items.append(again)
            elif not entry.items and entry.running == 0:
                entry.idle_since = time.monotonic()
            self._changed.notify_all()  # a client that yielded to this one may go on

    def _pick_urgent(
        self, accept: Callable[[T], bool], urgent: Callable[[T], bool]
    ) -> tuple[str, T] | None:
        for name, entry in self._clients.items():
            for item in entry.items:
                if accept(item) and urgent(item):
                    entry.items.remove(item)
                    entry.running += 1
                    return name, item
        return None

    def _pick(self, accept: Callable[[T], bool]) -> tuple[str, T] | None:
        now = time.monotonic()
        for name in [
            name
            for name, entry in self._clients.items()
            if entry.idle_since is not None and now - entry.idle_since > NEIGHBOUR_GRACE_S
        ]:
            del self._clients[name]
        order = sorted(self._clients.items(), key=lambda pair: (pair[1].served_s, pair[1].arrived))
        for name, entry in order:
            if self._yields(name, entry):
                continue
            for item in entry.items:
                if accept(item):
                    entry.items.remove(item)
                    entry.running += 1
                    return name, item
        return None

    def _yields(self, name: str, entry: _Client[T]) -> bool:
        """A client that has used `YIELD_SLACK_S` more than another client with a step
        running waits for that step: the CPU cores are what the pool shares, so a long
        image does not run beside a neighbour's short one and slow it down."""
        now = time.monotonic()
        return any(
            (
                other.running > 0
                or (other.idle_since is not None and now - other.idle_since <= NEIGHBOUR_GRACE_S)
            )
            and entry.served_s > other.served_s + YIELD_SLACK_S
            for other_name, other in self._clients.items()
            if other_name != name
        )
