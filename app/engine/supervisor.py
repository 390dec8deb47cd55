"""The threads of one model pool: started by name, watched on a tick, stopped together.

Both pools (`pool.py`'s CLIP encoders, `workers.py`'s OCR and captions) run their models
in threads of their own, never on the event loop; each has one watcher thread that looks
at the workers every tick (the encoder pool restarts a dead one, the words pool preempts a
client's step for another's), a readiness wait for start-up, and one stop that joins them
all. That discipline lives here once; what a worker does is its pool's.

    threads = Supervisor()
    threads.spawn(serve, worker, name="encoder-cuda:0")
    threads.every(check_workers, name="encoder-supervisor")
    threads.wait_until(lambda: pool.ready, timeout_s=120, poll_s=0.01)
    threads.stop(timeout_s=5)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# How often a watcher looks at the workers (and idle workers at the stop flag).
POLL_S = 0.05


class Supervisor:
    """Daemon threads sharing one stop flag; `stop` sets it and joins every live one."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def spawn(self, target: Callable[..., object], *args: Any, name: str) -> threading.Thread:
        """Start `target(*args)` in a daemon thread (a replacement, too) and keep it to join."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            # A replaced thread has ended: forget it, so restarts do not pile up. (Started
            # under the lock: a thread not yet started is not alive either.)
            self._threads = [kept for kept in self._threads if kept.is_alive()]
            self._threads.append(thread)
            thread.start()
        return thread

    def every(self, tick: Callable[[], None], *, name: str) -> threading.Thread:
        """Run `tick` every `POLL_S` in a thread of its own until the stop."""

        def watch() -> None:
            while not self.stopping.wait(POLL_S):
                tick()

        return self.spawn(watch, name=name)

    def wait_until(
        self,
        done: Callable[[], bool],
        timeout_s: float,
        *,
        poll_s: float = POLL_S,
        give_up: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Poll `done` until it holds, `give_up` holds or `timeout_s` passes; `done()` then."""
        deadline = time.monotonic() + timeout_s
        while not done() and not give_up() and time.monotonic() < deadline:
            time.sleep(poll_s)
        return done()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Set the stop flag and give each thread up to `timeout_s` to end."""
        self.stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)
