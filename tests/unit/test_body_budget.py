"""The body memory budget: reservations wait their turn, give up with 503, and a cancelled
waiter leaves nothing held."""

from __future__ import annotations

import asyncio

import pytest

from app.api.body_limit import BodyBudget
from app.errors import Overloaded


def test_reservations_wait_for_room_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget = BodyBudget(100, wait_s=5)
        order: list[str] = []
        await budget.reserve(80)

        async def take(name: str, size: int) -> None:
            await budget.reserve(size)
            order.append(name)

        big = asyncio.create_task(take("big", 60))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))  # fits now, but the big one came first
        await asyncio.sleep(0.01)
        assert order == [] and budget.held == 80
        budget.release(80)
        await asyncio.gather(big, small)
        assert budget.held == 70
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_past_the_wait_a_reservation_is_refused_with_retry_after() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=0.05)
        await budget.reserve(100)
        with pytest.raises(Overloaded) as refused:
            await budget.reserve(1)
        assert refused.value.code == "memory_budget"
        assert refused.value.headers["Retry-After"] == "1"
        budget.release(100)
        assert budget.held == 0
        await budget.reserve(100)  # the refused one left no trace

    asyncio.run(scenario())


def test_a_cancelled_waiter_holds_nothing_and_blocks_no_one() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100, wait_s=5)
        await budget.reserve(90)
        waiter = asyncio.create_task(budget.reserve(50))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(budget.reserve(10), 1)  # not queued behind the cancelled one
        assert budget.held == 100

    asyncio.run(scenario())


def test_zero_means_no_budget() -> None:
    async def scenario() -> None:
        budget = BodyBudget(0)
        await budget.reserve(10**12)
        assert budget.fits_ever(10**12) and budget.held == 0

    asyncio.run(scenario())
