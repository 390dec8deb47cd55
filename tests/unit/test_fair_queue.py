"""The OCR pool's fair queue and failure memory, alone: the least-served client goes first,
new items are bounded while steps put back are not, a client that has used clearly more
waits while another's step runs, and a remembered failure expires."""

from __future__ import annotations

import queue
import time

import pytest

from app.engine import fair_queue
from app.engine.failure_memory import FailureMemory
from app.engine.fair_queue import FairQueue


def take(q: FairQueue[str]) -> tuple[str, str] | None:
    return q.take(lambda item: True, 0.01, new=lambda item: item.endswith("new"))


def test_the_least_served_client_goes_first_and_steps_come_back() -> None:
    q: FairQueue[str] = FairQueue(max_items=2)
    q.put("a", "a1 new")
    q.put("b", "b1 new")
    with pytest.raises(queue.Full):
        q.put("c", "c1 new")

    assert take(q) == ("a", "a1 new")
    q.step_done("a", 1.0, again="a1 step")  # a has used 1 s; its next step always fits
    q.put("c", "c1 new")  # a's first take freed a place for a new item
    assert take(q) == ("b", "b1 new")
    q.step_done("b", 0.1)  # b is done
    assert take(q) == ("c", "c1 new")  # c has used nothing, a has used 1 s
    # c's step is running: a (1 s used) waits for it rather than run beside it.
    assert take(q) is None
    q.step_done("c", 0.05)
    time.sleep(fair_queue.NEIGHBOUR_GRACE_S + 0.05)  # c's turn is kept a moment, then gone
    assert take(q) == ("a", "a1 step")


def test_an_urgent_item_goes_first_whoever_sent_it() -> None:
    q: FairQueue[str] = FairQueue(max_items=4)
    q.put("light", "x new")
    q.put("heavy", "expired new")
    found = q.take(
        lambda item: True, 0.01, new=lambda item: True, urgent=lambda item: "expired" in item
    )
    assert found == ("heavy", "expired new")


def test_a_failure_is_remembered_until_its_ttl() -> None:
    memory = FailureMemory(ttl_s=0.2)
    memory.remember_here("k")
    assert memory.recalls_here("k") and not memory.recalls_here("other")
    time.sleep(0.25)
    assert not memory.recalls_here("k")
    never = FailureMemory(ttl_s=0)
    never.remember_here("k")
    assert not never.recalls_here("k")
