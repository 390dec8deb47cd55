"""`clip-proxy` as a first hour meets it: a typo in a variable named with the closest known
name, `clip-proxy config` and `--version`, a busy port told at once with its own exit
status, a log line as soon as the model starts loading, a warning when a real upstream has
no key.

Every process here is the console entry point in a subprocess, its stderr read back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import EXIT_PORT_BUSY, EXIT_STARTUP_FAILED
from tests.helpers import free_port
from tests.operations.test_startup import ROOT, Served

UPSTREAM_KEY = "sk-upstream-FIRSTHOUR-90b2"


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


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CLIP_PROXY_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_typo_is_named_once_with_the_closest_setting(serve: Any, test_model_dir: Path) -> None:
    served = serve(
        "--port",
        str(free_port()),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL="echo",
        CLIP_PROXY_PROMT_PRESET="describe",
        CLIP_PROXY_ZZZ_NOTHING_LIKE_IT="1",
    )
    served.wait_for(lambda line: line["msg"] == "ready")
    warnings = [line for line in served.lines() if line["level"] == "WARNING"]
    assert len(warnings) == 1, warnings
    message = warnings[0]["msg"]
    assert "CLIP_PROXY_PROMT_PRESET (did you mean CLIP_PROXY_PROMPT_PRESET?)" in message
    assert "CLIP_PROXY_ZZZ_NOTHING_LIKE_IT" in message


def test_loading_is_logged_at_once_then_ready(serve: Any, test_model_dir: Path) -> None:
    served = serve(
        "--port",
        str(free_port()),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL="echo",
    )
    served.wait_for(lambda line: line["msg"] == "ready")
    messages = [line["msg"] for line in served.lines()]
    assert messages.count("loading models") == 1
    assert messages.index("loading models") < messages.index("ready")
    loading = next(line for line in served.lines() if line["msg"] == "loading models")
    assert loading["model"] == str(test_model_dir)


def test_a_busy_port_is_one_line_and_its_own_exit_status(serve: Any, test_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = serve(
            "--port",
            str(port),
            CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
            CLIP_PROXY_UPSTREAM_BASE_URL="echo",
        )
        status = served.process.wait(timeout=30)
    assert status == EXIT_PORT_BUSY and EXIT_PORT_BUSY != EXIT_STARTUP_FAILED
    lines = served.lines()
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1, lines
    assert errors[0]["port"] == port
    assert f"port {port}" in errors[0]["msg"] and "--port" in errors[0]["msg"]
    assert "already in use" in errors[0]["msg"]
    assert "loading models" not in [line["msg"] for line in lines]  # told before any loading


def test_a_real_upstream_without_a_key_is_warned_about(serve: Any, test_model_dir: Path) -> None:
    served = serve(
        "--port",
        str(free_port()),
        CLIP_PROXY_CLIP_MODEL=str(test_model_dir),
        CLIP_PROXY_UPSTREAM_BASE_URL="https://upstream.example/v1",
    )
    warning = served.wait_for(lambda line: line["level"] == "WARNING", timeout_s=30)
    assert "CLIP_PROXY_UPSTREAM_API_KEY is empty" in warning["msg"]
    assert "upstream.example" in warning["msg"] and "--echo" in warning["msg"]


def test_config_prints_the_settings_their_sources_and_no_secret(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-client-FROMFILE-1\n")
    done = cli(
        "config",
        CLIP_PROXY_UPSTREAM_API_KEY=UPSTREAM_KEY,
        CLIP_PROXY_CACHE_URL="redis://user:cachepass@127.0.0.1:6379/3",
        CLIP_PROXY_API_KEYS_FILE=str(keys),
        CLIP_PROXY_PROMT_PRESET="describe",
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in done.stdout.splitlines()}
    assert rows["CLIP_PROXY_UPSTREAM_API_KEY"].split() == ["environment", "********"]
    assert rows["CLIP_PROXY_DEFAULT_MODEL"].split() == ["default", "deepseek-r1"]
    assert rows["CLIP_PROXY_CACHE_URL"].split() == [
        "environment",
        "redis://user:********@127.0.0.1:6379/3",
    ]
    assert rows["CLIP_PROXY_API_KEYS"].split() == ["file", "(CLIP_PROXY_API_KEYS_FILE)", "********"]
    for secret in (UPSTREAM_KEY, "cachepass", "sk-client-FROMFILE-1"):
        assert secret not in done.stdout + done.stderr
    assert "did you mean CLIP_PROXY_PROMPT_PRESET?" in done.stderr


def test_config_names_an_invalid_setting() -> None:
    done = cli("config", CLIP_PROXY_CORS_ALLOW_ORIGINS="*", CLIP_PROXY_API_KEYS="k")
    assert done.returncode == 2 and "CLIP_PROXY_CORS_ALLOW_ORIGINS" in done.stderr


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == "clip-proxy 0.1.0"
