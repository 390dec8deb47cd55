"""SIGTERM while streams are live: /readyz turns 503 at once, new requests are refused,
and every stream in flight completes before the process exits.

The proxy runs as `python -m app.cli serve` in its own process, so the signal, uvicorn's
graceful shutdown and the exit are the real ones.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port
from tests.processes import scaled
from tests.upstream_server import FakeUpstream, Reply, r1_events

ROOT = Path(__file__).parents[2]
STREAMS = 10


def stream_to_the_end(url: str) -> list[str]:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line.startswith("data: ")]


@pytest.fixture
def served(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    env = os.environ | {
        "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
        "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
        "CLIP_PROXY_DEVICE": "cpu",
        # Long enough that the checks below run inside it on a loaded 2-core machine.
        "CLIP_PROXY_DRAIN_DELAY_S": "3",
        "CLIP_PROXY_SHUTDOWN_GRACE_S": "30",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + scaled(90)
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(process.url + "/readyz", timeout=1).status_code == 200:  # type: ignore[attr-defined]
                break
        assert process.poll() is None, "the server exited during start-up"
        time.sleep(0.2)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigterm_drains_live_streams(
    served: subprocess.Popen[bytes], upstream: FakeUpstream
) -> None:
    url: str = served.url  # type: ignore[attr-defined]
    upstream.script(*[Reply(chunk_delay_s=0.4) for _ in range(STREAMS)])  # about 3 s each
    with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(stream_to_the_end, url) for _ in range(STREAMS)]
        deadline = time.monotonic() + scaled(20)
        while len(upstream.requests) < STREAMS:
            assert time.monotonic() < deadline, "the streams did not all start"
            time.sleep(0.05)
        served.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # At once: not ready, and new work is turned away with a reason and Retry-After.
        time.sleep(0.2)
        assert httpx.get(url + "/readyz").status_code == 503
        refused = httpx.post(
            url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        assert refused.headers["retry-after"] == "1"
        # After the drain delay the listener closes: new connections are refused.
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                # Refused; or, racing the close, accepted and then dropped unanswered.
                break
            assert time.monotonic() - signalled < 8, "the listener stayed open"
            time.sleep(0.1)

        results = [future.result(timeout=30) for future in streams]
    for events in results:
        assert events[-1] == "data: [DONE]"
        assert len(events) == len(r1_events())  # every chunk of the reply arrived
    assert len(upstream.requests) == STREAMS  # the refused request never went upstream
    assert served.wait(timeout=30) == 0
