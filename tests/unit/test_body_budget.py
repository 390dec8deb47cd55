"""The body memory budget: bytes are held as they arrive, waiters take their turn and give
up with 503, a cancelled waiter leaves nothing held, and bodies part-way in that fill the
budget between them do not all wait out the timeout."""

from __future__ import annotations

import asyncio

import pytest

from app.api.body_budget import BodyBudget, BodyHold
from app.errors import Overloaded


def test_room_goes_to_the_body_furthest_in_first() -> None:
    async def scenario() -> list[str]:
        budget = BodyBudget(100, wait_s=5)
        order: list[str] = []
        first, near, far = budget.hold(), budget.hold(), budget.hold()
        await first.grow(40)
        await far.grow(10)
        await near.grow(50)  # full

        async def take(name: str, hold: BodyHold, size: int) -> None:
            await hold.grow(size)
            order.append(name)

        waiting = [
            asyncio.create_task(take("far", far, 20)),
            asyncio.create_task(take("near", near, 20)),
        ]
        await asyncio.sleep(0.01)
        assert order == [] and budget.held == 100
        first.release()  # 40 free: both fit, the one furthest in goes first
        await asyncio.gather(*waiting)
        assert budget.held == 100
        return order

    assert asyncio.run(scenario()) == ["near", "far"]


def test_past_the_wait_a_reservation_is_refused_with_retry_after() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=0.05)
        full = budget.hold()
        await full.grow(100)
        with pytest.raises(Overloaded) as refused:
            await budget.hold().grow(1)
        assert refused.value.code == "memory_budget"
        assert refused.value.headers["Retry-After"] == "1"
        full.release()
        full.release()  # idempotent
        assert budget.held == 0
        await budget.hold().grow(100)  # the refused one left no trace

    asyncio.run(scenario())


def test_a_cancelled_waiter_holds_nothing_and_blocks_no_one() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=5)
        await budget.hold().grow(90)
        waiter = asyncio.create_task(budget.hold().grow(50))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(budget.hold().grow(10), 1)  # not behind the cancelled one
        assert budget.held == 100

    asyncio.run(scenario())


def test_when_every_byte_held_is_waiting_the_least_progressed_is_refused_at_once() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=30)
        a, b, c = budget.hold(), budget.hold(), budget.hold()
        await a.grow(50)
        await b.grow(30)
        await c.grow(20)  # full: three bodies part-way in
        grow_a = asyncio.create_task(a.grow(10))
        grow_b = asyncio.create_task(b.grow(10))
        await asyncio.sleep(0.01)
        assert not grow_a.done()  # c is still reading: its bytes may complete a body
        grow_c = asyncio.create_task(c.grow(10))
        # Now every byte held waits: c (least held) is refused, its room goes to a and b.
        with pytest.raises(Overloaded):
            await asyncio.wait_for(grow_c, 1)
        await asyncio.wait_for(asyncio.gather(grow_a, grow_b), 1)
        assert (a.held, b.held, c.held) == (60, 40, 0)
        assert budget.held == 100
        c.release()  # its owner gives back what it has: nothing, the budget took it
        assert budget.held == 100

    asyncio.run(scenario())


def test_a_body_far_in_that_waits_takes_room_from_one_less_far_in() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=2)  # patience: a quarter, 0.5 s
        far, near_start, reading = budget.hold(), budget.hold(), budget.hold()
        await far.grow(60)
        await near_start.grow(30)
        await reading.grow(10)  # full; `reading` is not waiting: it might free room
        grow_far = asyncio.create_task(far.grow(10))
        grow_near_start = asyncio.create_task(near_start.grow(10))
        await asyncio.sleep(0.1)
        assert not grow_far.done() and not grow_near_start.done()
        # Past the patience the body least far in gives way, well before the 2 s wait.
        await asyncio.wait_for(grow_far, 1.5)
        with pytest.raises(Overloaded):
            await asyncio.wait_for(grow_near_start, 0.1)
        assert (far.held, near_start.held, budget.held) == (70, 0, 80)

    asyncio.run(scenario())


def test_zero_means_no_budget() -> None:
    async def scenario() -> None:
        budget = BodyBudget(0)
        hold = budget.hold()
        await hold.grow(10**12)  # never waits, but is counted for the held gauge
        assert budget.fits_ever(10**12) and budget.held == 10**12
        hold.release()
        assert budget.held == 0

    asyncio.run(scenario())
