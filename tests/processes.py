"""Processes the tests start, and how long the tests wait for them.

Every deadline a test waits on goes through `scaled`: on a loaded machine (CI beside other
jobs) `CLIP_PROXY_TEST_TIMEOUT_SCALE=3` gives every readiness poll three times as long,
without changing what the test asserts. A poll that runs out says what it waited for and
the last lines the process wrote (`log_tail`).

Every process a test run starts carries `SESSION_VARIABLE` in its environment (set here, at
import, and inherited by children). When the run ends, `leftovers` finds the ones still
alive, however they were started, so that the session can end them and fail: a
`clip-proxy serve` left behind holds a port and CPU on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCALE_VARIABLE = "CLIP_PROXY_TEST_TIMEOUT_SCALE"
# Not a CLIP_PROXY_* name: tests that start `serve` with a clean CLIP_PROXY_* environment
# keep it.
SESSION_VARIABLE = "PYTEST_CLIP_PROXY_SESSION"


def timeout_scale() -> float:
    try:
        return max(1.0, float(os.environ.get(SCALE_VARIABLE, "1")))
    except ValueError:
        return 1.0


def scaled(seconds: float) -> float:
    """`seconds` of waiting, stretched by CLIP_PROXY_TEST_TIMEOUT_SCALE (at least 1)."""
    return seconds * timeout_scale()


def log_tail(path: Path | str, lines: int = 20) -> str:
    """The last `lines` lines of a log file, for a failure message."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def mark_session() -> str:
    """Tag this test run's processes (this one and every child it starts)."""
    marker = os.environ.get(SESSION_VARIABLE)
    if not marker or os.environ.get("PYTEST_CLIP_PROXY_SESSION_OWNER") != str(os.getpid()):
        # A nested pytest run (a test that runs pytest) tags its own processes anew.
        marker = uuid.uuid4().hex
        os.environ[SESSION_VARIABLE] = marker
        os.environ["PYTEST_CLIP_PROXY_SESSION_OWNER"] = str(os.getpid())
    return marker


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str

    @property
    def is_proxy(self) -> bool:
        return "app.cli" in self.command or "clip-proxy" in self.command


def leftovers(marker: str) -> list[Leftover]:
    """Live processes, other than this one, whose environment carries `marker`."""
    found = []
    needle = f"{SESSION_VARIABLE}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(Leftover(int(entry.name), command.strip()))
    return found


def end_leftovers(marker: str, grace_s: float = 10) -> list[Leftover]:
    """Wait up to `grace_s` for the run's processes to finish on their own; kill the rest.
    Returns what had to be killed."""
    deadline = time.monotonic() + scaled(grace_s)
    alive = leftovers(marker)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = leftovers(marker)
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    return alive
