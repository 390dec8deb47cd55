"""The uvicorn server of `clip-proxy serve`, with a graceful drain on SIGTERM.

A model that cannot be loaded (`startup.failure`, set by the app's loader) stops the
server the same way, and `clip-proxy serve` exits non-zero.

On the first SIGTERM (or SIGINT): `/readyz` turns 503 and new `/v1/*` requests get 503 with
Retry-After at once; after `drain_delay_s` (time for a load balancer to see /readyz fail)
uvicorn's own graceful shutdown closes the listener, so new connections are refused, and
waits up to `shutdown_grace_s` for requests in flight, streams included, to finish. A
second signal exits at once.

    DrainingServer(uvicorn.Config(app, ...), app.state.admission, drain_delay_s=0).run()
"""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from app.api.admission import Admission

if TYPE_CHECKING:
    from app.lifecycle import Startup

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        admission: Admission,
        *,
        drain_delay_s: float = 0.0,
        startup: Startup | None = None,
    ) -> None:
        super().__init__(config)
        self.admission = admission
        self.startup_status = startup
        self.drain_delay_s = drain_delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only flags here; the main loop acts on them.
        if self._exit_at is not None:
            self.should_exit = True
            self.force_exit = True
            return
        self.admission.begin_draining()
        self._exit_at = time.monotonic() + self.drain_delay_s
        if self.drain_delay_s <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.startup_status and self.startup_status.failure and not self.should_exit:
            self.admission.begin_draining()
            self.should_exit = True
        due = self._exit_at is not None and time.monotonic() >= self._exit_at
        if due and not self.should_exit:
            logger.info("draining: closing the listener")
            self.should_exit = True
        return await super().on_tick(counter)
