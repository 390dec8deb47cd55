"""A point in `time.monotonic()` time by which a piece of work must be done.

deadline = Deadline.after(5.0)
deadline.expired(), deadline.remaining()
Deadline(math.inf)          # none
"""

from __future__ import annotations

import time


class Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0
