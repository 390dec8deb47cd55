"""The README's Quick start and Use it, run as written, so the README cannot drift.

Every fenced block under the `## Quick start` and `## Use it` headings runs, in order, in
a fresh directory (with `tests/data` linked in) as a new user would from the repository
root: bash blocks with bash, python blocks with Python. A block preceded by
`<!-- readme-test: server -->` is the command that runs the proxy: it is started, with
`--port` added, and the following blocks run against it (`localhost:8000` becomes its
port). A block preceded by `<!-- readme-test: skip ... -->` is not run (set-up, the
network). Other sections may be added around these; a block added to these two needs
to run here, or a skip marker that says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port
from tests.processes import scaled

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
SECTIONS = ("Quick start", "Use it")
_BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<mark>[\w-]+)[^>]*-->\s*\n)?```(?P<lang>\w+)\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    code: str
    mark: str | None


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for section in SECTIONS:
        match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        assert match, f"README.md has no '## {section}' section"
        blocks += [
            Block(section, found["lang"], found["code"], found["mark"])
            for found in _BLOCK.finditer(match[1])
        ]
    return blocks


def as_run_here(code: str, port: int) -> str:
    """The block as it runs in the test: this interpreter for `.venv/bin/...`, the test's
    port for 8000."""
    commands = {"clip-proxy": f"{sys.executable} -m app.cli", "python": sys.executable}
    code = re.sub(r"\.venv/bin/(clip-proxy|python)\b", lambda m: commands[m[1]], code)
    return code.replace("localhost:8000", f"localhost:{port}")


def test_the_readme_marks_its_blocks() -> None:
    blocks = readme_blocks()
    assert [block.mark for block in blocks].count("server") == 1
    assert {block.lang for block in blocks if block.mark != "skip"} == {"bash", "python"}
    assert all(block.mark in (None, "skip", "server") for block in blocks)


def test_quick_start_and_use_it_run_as_written(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_PROXY_")}
    # The app as this checkout has it, from any directory.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    server: subprocess.Popen[bytes] | None = None
    log_path = tmp_path / "serve.log"
    outputs: list[tuple[Block, str]] = []
    try:
        for block in readme_blocks():
            if block.mark == "skip":
                continue
            code = as_run_here(block.code, port)
            if block.mark == "server":
                command = code.strip().replace("\\\n", " ") + f" --port {port}"
                with log_path.open("wb") as log:
                    server = subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=tmp_path,
                        env=env,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                wait_ready(port, server, log_path)
                continue
            argv = ["bash", "-euo", "pipefail", "-c", code]
            if block.lang == "python":
                argv = [sys.executable, "-c", code]
            result = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, f"{block.code}\n{result.stdout}\n{result.stderr}"
            outputs.append((block, result.stdout))
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=30)

    python = [out for block, out in outputs if block.lang == "python"]
    assert len(python) == 3
    reasoning, _, answer = python[0].partition("\n\nAnswer:\n")
    assert reasoning.startswith("Reasoning:\nThe proxy sent me 1 image")
    assert answer.startswith("clip-proxy echo: 1 image.\nimage 1 (this turn): 451x300 px")
    # The Responses example: the same picture streamed as typed events, then a second turn
    # by previous_response_id in which it is an earlier turn's image.
    assert "The proxy sent me 1 image" in python[1]
    assert "clip-proxy echo: 1 image.\nimage 1 (this turn): 451x300 px" in python[1]
    assert python[1].count("clip-proxy echo:") == 2, python[1]
    assert "earlier" in python[1].rsplit("clip-proxy echo:", 1)[1], python[1]
    # The Messages example: thinking and text from the anthropic SDK's stream.
    assert "The proxy sent me 1 image" in python[2]
    assert "clip-proxy echo: 1 image.\nimage 1 (this turn): 451x300 px" in python[2]
    assert python[2].rstrip().split("\n")[-1].split()[0] == "end_turn", python[2]
    curl = [out for block, out in outputs if "curl" in block.code]
    assert len(curl) == 1
    assert "clip-proxy echo: 1 image." in curl[0] and curl[0].rstrip().endswith("data: [DONE]")
    log_lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    ready = [line for line in log_lines if line["msg"] == "ready"]
    assert len(ready) == 1 and ready[0]["upstream"].startswith("echo (embedded")


def wait_ready(port: int, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + scaled(120)
    while time.monotonic() < deadline:
        assert server.poll() is None, log_path.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"the README's proxy was not ready in 120 s: {log_path.read_text()[-3000:]}")
