"""`clip-proxy serve` starting up as an operator sees it: a model that cannot load ends the
process with one message and the ways out, a `ready` line once it can serve, a safe bind
address by default, a warning when it listens beyond loopback without client keys.

Every process here is the console entry point in a subprocess, its stderr read back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import _is_loopback
from tests.helpers import free_port
from tests.processes import scaled
from tests.upstream_server import FakeUpstream

ROOT = Path(__file__).parents[2]
UPSTREAM_KEY = "sk-upstream-STARTUP-5e0c41"
# A model that cannot load must end the process within this (the bound).
EXIT_WITHIN_S = 60


class Served:
    """A `clip-proxy serve` subprocess writing its log to a file."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CLIP_PROXY_", "HF_"))}
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", *args],
            cwd=ROOT,
            env={**base, "CLIP_PROXY_DEVICE": "cpu", **env},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.log_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line that is not JSON: {line[:300]}")
        return parsed

    def wait_for(self, predicate: Any, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < deadline:
            for line in self.lines():
                if predicate(line):
                    return line
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"no such log line in {timeout_s} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str, **env: str) -> Served:
        served = Served(tmp_path, list(args), env)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def corrupt_copy(model_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "corrupt"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(b"\x00" * 16 + weights.read_bytes()[16:4096])
    return broken


@pytest.mark.parametrize("case", ["wrong-directory", "corrupt-weights", "no-hub", "offline"])
def test_a_model_that_cannot_load_ends_the_process_with_one_message(
    case: str, serve: Any, test_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        "wrong-directory": {"CLIP_PROXY_CLIP_MODEL": str(tmp_path / "no-such-model")},
        "corrupt-weights": {"CLIP_PROXY_CLIP_MODEL": str(corrupt_copy(test_model_dir, tmp_path))},
        # A Hub that refuses connections (a closed loopback port) and an empty cache.
        "no-hub": {
            "CLIP_PROXY_CLIP_MODEL": "openai/clip-vit-large-patch14",
            "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "HF_HOME": str(tmp_path / "hf"),
        },
        "offline": {
            "CLIP_PROXY_CLIP_MODEL": "openai/clip-vit-large-patch14",
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf"),
        },
    }[case]
    served = serve("--port", str(free_port()), **env)
    status = served.process.wait(timeout=EXIT_WITHIN_S + 30)
    took = time.monotonic() - served.started
    assert status != 0
    assert took < EXIT_WITHIN_S
    lines = served.lines()  # every line JSON, third-party ones included
    errors = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, errors
    message = errors[0]["msg"]
    ways_out = ("CLIP_PROXY_CLIP_MODEL", "make-test-model", "local directory", "HF_HUB_OFFLINE")
    assert all(way_out in message for way_out in ways_out), message
    assert "Traceback" not in served.log_path.read_text()
    assert not [line for line in lines if line["msg"] == "ready"]


def test_ipv6_loopback_serves_and_logs_ready_once(
    serve: Any, test_model_dir: Path, upstream: FakeUpstream
) -> None:
    port = free_port()
    served = serve(
        "--host",
        "[::1]",  # as written in a URL; `::1` works as well
        "--port",
        str(port),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL=upstream.base_url,
        CLIP_PROXY_UPSTREAM_API_KEY=UPSTREAM_KEY,
    )
    ready = served.wait_for(lambda line: line["msg"] == "ready")
    assert ready["model"] == str(test_model_dir)
    assert ready["device"] == ["cpu"] and ready["workers"] == 1
    assert ready["dtype"] in ("float32", "bfloat16")
    assert ready["upstream"] == upstream.base_url
    reply = httpx.get(f"http://[::1]:{port}/readyz", timeout=5)
    assert reply.status_code == 200
    with contextlib.suppress(httpx.HTTPError):  # not on IPv4: only ::1 was asked for
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code != 200
    lines = served.lines()
    assert [line["msg"] for line in lines].count("ready") == 1
    assert not [line for line in lines if line["level"] == "WARNING"]
    assert UPSTREAM_KEY not in served.log_path.read_text()


def test_every_interface_without_client_keys_warns(serve: Any, test_model_dir: Path) -> None:
    port = free_port()
    served = serve(
        "--host",
        "::",
        "--port",
        str(port),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL="echo",
    )
    warning = served.wait_for(lambda line: line["level"] == "WARNING")
    assert "without client keys" in warning["msg"] and "CLIP_PROXY_API_KEYS" in warning["msg"]
    served.wait_for(lambda line: line["msg"].startswith("listening on every interface"))
    # `::` is every interface, IPv4 included (a dual-stack socket); only loopback is asked.
    assert httpx.get(f"http://[::1]:{port}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_client_keys_silence_the_warning(serve: Any, test_model_dir: Path) -> None:
    served = serve(
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL="echo",
        CLIP_PROXY_API_KEYS="client-key-STARTUP-1",
    )
    served.wait_for(lambda line: line["msg"] == "ready")
    assert not [line for line in served.lines() if line["level"] == "WARNING"]


def test_help_shows_the_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())
    assert "(default: 127.0.0.1)" in text
    assert "(default: 8000)" in text
    assert "--echo" in text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("proxy.internal", False)],
)  # fmt: skip
def test_which_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback
