"""The suite ends what it starts: a test run that leaves a `clip-proxy serve` behind (a test
that failed before its clean-up) kills it and fails, instead of leaving it to hold a port
and CPU on the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import scaled

ROOT = Path(__file__).parents[2]

FORGETFUL_TEST = """
import subprocess, sys, time
from pathlib import Path

import httpx

from tests.helpers import free_port


def test_starts_a_server_and_fails(test_model_dir: Path, upstream) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**__import__("os").environ, "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
             "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url, "CLIP_PROXY_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    print(f"SERVER PID {process.pid}", flush=True)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert False, "failing on purpose, with the server still running"
"""


def test_a_failed_test_run_leaves_no_server_behind(tmp_path: Path) -> None:
    test_file = ROOT / "tests" / "operations" / f"test_forgetful_{os.getpid()}.py"
    test_file.write_text(FORGETFUL_TEST.replace("DEADLINE", str(scaled(90))))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(test_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=scaled(240),
        )
    finally:
        test_file.unlink()
    output = run.stdout + run.stderr
    found = re.search(r"SERVER PID (\d+)", output)
    assert found, output[-3000:]
    pid = int(found.group(1))
    assert run.returncode != 0, output[-3000:]
    assert "processes left running by the tests (killed)" in output, output[-3000:]
    assert f"pid {pid}:" in output
    deadline = time.monotonic() + scaled(10)
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), f"clip-proxy serve (pid {pid}) is still alive"
