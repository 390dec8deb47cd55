"""SSE keep-alive: a comment line whenever a stream has been silent for a while.

Reasoning models can think for minutes between tokens, and load balancers cut connections
that stay idle for 60 s. An SSE comment (`: ping`) is ignored by every SSE client, so it
keeps the connection busy without changing the stream's content.

The relay loop itself never waits on a timer: per chunk it only notes the time
(`IdleTimer.touch`). One task per stream sleeps until the stream has been silent for
`interval_s` and then sends the ping, so a chunk costs no task, future or timer handle,
and a pending upstream read is never cancelled to make room for a ping (httpx would drop
the connection).

    timer = IdleTimer(interval_s=15)
    pinger = asyncio.create_task(timer.ping_when_idle(send_ping))
    async for chunk in chunks:
        await send(chunk)
        timer.touch()
    pinger.cancel()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

PING = b": ping\n\n"

logger = logging.getLogger(__name__)


class IdleTimer:
    """When a stream last sent something, and a loop that pings once it has been quiet."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._clock = asyncio.get_running_loop().time
        self.last_sent = self._clock()

    def touch(self) -> None:
        """The stream just sent a chunk: the silence starts again from now."""
        self.last_sent = self._clock()

    async def ping_when_idle(self, ping: Callable[[], Awaitable[None]]) -> None:
        """Call `ping` after every `interval_s` of silence, until cancelled.

        Wakes at most once per interval while chunks flow (it sleeps until the newest
        chunk would have been silent long enough), so its cost does not grow with the
        chunk rate."""
        while True:
            silent_s = self._clock() - self.last_sent
            if silent_s < self.interval_s:
                await asyncio.sleep(self.interval_s - silent_s)
                continue
            try:
                await ping()
            except Exception:
                # The stream's own loop sees the same broken connection and ends the
                # response; a keep-alive has nothing more to do.
                logger.debug("keep-alive ping failed; no more pings for this stream")
                return
            self.touch()
