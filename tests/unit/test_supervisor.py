"""The pools' thread supervisor, alone: threads start under their names, the watcher ticks
until the stop, a readiness wait ends when the condition holds or gives up, and `stop`
ends every thread, replacements included."""

from __future__ import annotations

import threading

from app.engine.supervisor import Supervisor


def test_stop_ends_the_workers_the_replacements_and_the_watcher() -> None:
    threads = Supervisor()
    ticks = threading.Event()
    first = threads.spawn(threads.stopping.wait, name="worker-0")
    crashed = threads.spawn(lambda: None, name="worker-1")
    crashed.join(5)
    replacement = threads.spawn(threads.stopping.wait, name="worker-1")
    watcher = threads.every(ticks.set, name="watcher")

    assert [first.name, replacement.name, watcher.name] == ["worker-0", "worker-1", "watcher"]
    assert ticks.wait(5), "the watcher never ticked"
    assert all(thread.daemon for thread in (first, replacement, watcher))

    threads.stop(timeout_s=5)

    assert not any(thread.is_alive() for thread in (first, replacement, watcher))


def test_the_readiness_wait_ends_when_ready_or_when_it_gives_up() -> None:
    threads = Supervisor()
    ready = threading.Event()
    threads.spawn(ready.set, name="loader")

    assert threads.wait_until(ready.is_set, timeout_s=30, poll_s=0.01)
    # A load that failed ends the wait at once, however long the deadline: not ready.
    assert not threads.wait_until(lambda: False, timeout_s=3600, give_up=lambda: True)
    assert not threads.wait_until(lambda: False, timeout_s=0.05)
    threads.stop()
