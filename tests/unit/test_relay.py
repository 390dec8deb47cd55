"""The relay response releases the upstream even when its body loop never ran."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.api.relay import RelayResponse


@pytest.mark.asyncio
async def test_upstream_is_closed_when_the_client_left_before_the_first_chunk() -> None:
    started: list[bool] = []
    closed: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        started.append(True)
        yield b"data: x\n\n"

    async def close() -> None:
        closed.append(True)

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}  # the client is already gone

    async def send(message: object) -> None:
        await asyncio.sleep(0.05)  # slow enough that the disconnect wins the race

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "headers": []}
    response = RelayResponse(
        chunks(), close=close, ping_interval_s=0, media_type="text/event-stream"
    )
    await response(scope, receive, send)
    assert started == []  # the body loop never pulled a chunk...
    assert closed == [True]  # ...and the upstream response was released all the same
