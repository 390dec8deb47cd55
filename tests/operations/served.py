"""A real `clip-proxy serve` process for the operations tests, and raw sockets to it:
`Served` starts one with CLIP_PROXY_* settings (and more environment), waits for readiness
with a deadline that scales (`tests/processes.py`), reads its memory from /proc and kills it;
the `serve` fixture (conftest.py) stops every one a test started, even one that never got
ready."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port
from tests.processes import SCALE_VARIABLE, log_tail, scaled
from tests.upstream_server import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


class Served:
    """`python -m app.cli serve` in its own process, with these CLIP_PROXY_* settings."""

    def __init__(
        self,
        model_dir: Path,
        upstream: FakeUpstream,
        *,
        environ: dict[str, str | None] | None = None,
        **settings: Any,
    ) -> None:
        """`environ`: more variables for the process (None removes one)."""
        self.port = free_port()
        env = os.environ | {
            "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
            "CLIP_PROXY_CLIP_MODEL": str(model_dir),
            "CLIP_PROXY_DEVICE": "cpu",
            "CLIP_PROXY_LOG_LEVEL": "warning",
        }
        env |= {f"CLIP_PROXY_{name.upper()}": str(value) for name, value in settings.items()}
        for name, value in (environ or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
        # Its log, for the failure message of a start that does not get ready.
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + scaled(90)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            assert self.process.poll() is None, (
                f"the server exited during start-up:\n{log_tail(self.log.name)}"
            )
            time.sleep(0.2)
        raise RuntimeError(
            f"clip-proxy serve did not get ready in {scaled(90):.0f} s"
            f" ({SCALE_VARIABLE} stretches it):\n{log_tail(self.log.name)}"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, field: str) -> int:
        """A size from /proc/PID/status in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak(self) -> None:
        """Start VmHWM (peak RSS) afresh from the current RSS (Linux 4.0+)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection."""
    chunks = []
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
