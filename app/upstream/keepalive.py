"""SSE keep-alive: a comment line whenever a stream has been silent for a while.

Reasoning models can think for minutes between tokens, and load balancers cut connections
that stay idle for 60 s. An SSE comment (`: ping`) is ignored by every SSE client, so it
keeps the connection busy without changing the stream's content.

A ping goes out only at an event boundary: when the bytes sent so far end with a blank
line (or nothing has been sent yet). An upstream that pauses inside an event, or inside a
JSON body, gets no ping until the event is whole, so a ping can never split one.

The relay loop itself never waits on a timer: per chunk it only notes the time and the
chunk's last bytes (`IdleTimer.touch`). One task per stream sleeps until the stream has
been silent for `interval_s` and then sends the ping, so a chunk costs no task, future or
timer handle, and a pending upstream read is never cancelled to make room for a ping.

    timer = IdleTimer(interval_s=15)
    pinger = asyncio.create_task(timer.ping_when_idle(send_ping))
    async for chunk in chunks:
        timer.touch(chunk)
        await send(chunk)
    pinger.cancel()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

PING = b": ping\n\n"
# The ends of an SSE event: a blank line, in any of the line endings SSE allows.
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")

logger = logging.getLogger(__name__)


class IdleTimer:
    """When a stream last sent something, and a loop that pings once it has been quiet."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._clock = asyncio.get_running_loop().time
        self.last_sent = self._clock()
        self._tail = b"\n\n"  # nothing sent yet: a boundary

    def touch(self, chunk: bytes = PING) -> None:
        """The stream just sent `chunk`: the silence starts again from now."""
        self.last_sent = self._clock()
        # The last four bytes sent: enough to see a blank line split across chunks.
        self._tail = chunk[-4:] if len(chunk) >= 4 else (self._tail + chunk)[-4:]

    @property
    def at_event_boundary(self) -> bool:
        return self._tail.endswith(_EVENT_ENDS)

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
            if not self.at_event_boundary:
                # Inside an event: a ping here would split it. Look again a little later.
                await asyncio.sleep(min(self.interval_s, 0.25))
                continue
            try:
                await ping()
            except Exception:
                # The stream's own loop sees the same broken connection and ends the
                # response; a keep-alive has nothing more to do.
                logger.debug("keep-alive ping failed; no more pings for this stream")
                return
            self.touch()
