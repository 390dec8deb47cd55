"""The log of a real `clip-proxy serve` process: JSON lines, request ids, no secrets.

The proxy runs as the operator runs it (the console entry point in a subprocess, its
stderr captured), serves a streamed request with a data-URL image, a multipart upload and
a broken image, and its whole log is then read back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import _secrets as cli_secrets
from app.config import Settings
from app.logging_setup import JsonFormatter, Redactor
from app.observability.request_context import RequestRecord, bound
from tests.helpers import DATA, data_url, free_port
from tests.processes import scaled
from tests.upstream_server import FakeUpstream

ROOT = Path(__file__).parents[2]
UPSTREAM_KEY = "sk-upstream-LOGTEST-8c1f2e9a7d"
CHAT = "/v1/chat/completions"


@pytest.fixture
def served_log(
    test_model_dir: Path, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """A `clip-proxy serve` process; yields its URL and the file its stderr goes to."""
    port = free_port()
    env = {
        **os.environ,
        "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
        "CLIP_PROXY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
        "CLIP_PROXY_DEVICE": "cpu",
    }
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + scaled(120)
            while time.monotonic() < deadline:
                assert process.poll() is None, stderr_path.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise AssertionError("clip-proxy serve was not ready in 120 s")
            yield url, stderr_path
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line[:300]}")
    return parsed


def test_request_log_has_ids_and_timings_and_no_key_or_image(
    served_log: tuple[str, Path], upstream: FakeUpstream
) -> None:
    url, stderr_path = served_log
    image = (DATA / "coffee.png").read_bytes()
    encoded = base64.b64encode(image).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": data_url(DATA / "coffee.png")}},
            ],
        }
    ]
    with httpx.stream(
        "POST",
        url + CHAT,
        json={"messages": messages, "stream": True},
        headers={"X-Request-ID": "log-test-stream"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert b"[DONE]" in b"".join(response.iter_bytes())
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    upload = httpx.post(
        url + CHAT,
        data={"prompt": "and this?"},
        files={"image": ("cam.png", (DATA / "camera.png").read_bytes(), "image/png")},
        headers={"X-Request-ID": "log-test-upload"},
        timeout=30,
    )
    assert upload.status_code == 200
    broken = "data:image/png;base64," + encoded[: len(encoded) // 2]  # truncated PNG
    bad = httpx.post(
        url + CHAT,
        json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": broken}}]}]},
        headers={"X-Request-ID": "log-test-broken"},
        timeout=30,
    )  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["request_id"] == "log-test-broken"

    # The request line is written when the response ends; give the process a moment.
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline and "log-test-broken" not in stderr_path.read_text():
        time.sleep(0.1)
    raw = stderr_path.read_text()
    lines = log_lines(stderr_path)

    assert UPSTREAM_KEY not in raw
    assert "base64," not in raw
    for start in range(0, len(encoded) - 32, 997):  # any 32-char piece of the image's base64
        assert encoded[start : start + 32] not in raw

    by_id = {line.get("request_id"): line for line in lines if line.get("msg") == "request"}
    stream_line = by_id["log-test-stream"]
    assert stream_line["level"] == "INFO"
    assert stream_line["route"] == CHAT and stream_line["status"] == 200
    assert stream_line["duration_ms"] > 0
    assert {"fetch", "decode", "preprocess", "encode", "upstream_ttfb"} <= set(
        stream_line["stages_ms"]
    )
    assert stream_line["stream"] == "complete"
    assert stream_line["completion_tokens"] == 7
    assert stream_line["images"] == 1
    assert by_id["log-test-upload"]["status"] == 200
    assert by_id["log-test-broken"]["status"] == 400
    assert by_id["log-test-broken"]["error"] == "invalid_image_format"
    # Probes are not INFO noise: the readiness polling left no INFO request lines.
    assert not [line for line in lines if line.get("route") == "/readyz"]


def test_redactor_masks_keys_bearer_tokens_and_base64() -> None:
    payload = base64.b64encode(bytes(range(256)) * 4).decode()
    record = logging.makeLogRecord(
        {
            "name": "test",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": "upstream said %s",
            "args": (f"bad key {UPSTREAM_KEY}; Authorization: Bearer abc.def",),
            "image": f"data:image/png;base64,{payload}",
            "raw": payload,
        }
    )
    with bound(RequestRecord.start("rid-1")):
        line = JsonFormatter(Redactor([UPSTREAM_KEY])).format(record)
    parsed = json.loads(line)
    assert parsed["request_id"] == "rid-1"
    assert UPSTREAM_KEY not in line and "abc.def" not in line
    assert payload[:32] not in line
    assert parsed["image"] == "data:[redacted]"


def test_client_keys_from_the_keys_file_are_masked_too(tmp_path: Path) -> None:
    """`clip-proxy serve` masks every configured key, those of API_KEYS_FILE as well."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nclient-key-FROMFILE-71b3\n")
    settings = Settings(api_keys="client-key-FROMENV-2d9a", api_keys_file=keys)
    record = logging.makeLogRecord(
        {"msg": "client sent client-key-FROMFILE-71b3 and client-key-FROMENV-2d9a"}
    )
    line = JsonFormatter(Redactor(cli_secrets(settings))).format(record)
    assert "FROMFILE" not in line and "FROMENV" not in line


def test_library_lines_go_through_the_json_formatter() -> None:
    """transformers and huggingface_hub add plain-text handlers of their own when imported
    (huggingface_hub's also propagates: every line twice); uvicorn's and Python warnings
    are raw text too unless routed. After `configure_logging`, as `clip-proxy serve` calls
    it, each is one JSON line."""
    script = """
import warnings
import app.main  # imports transformers and huggingface_hub, as `serve` does first
from app.logging_setup import configure_logging
from transformers.utils import logging as transformers_logging
from huggingface_hub.utils import logging as hub_logging
import logging
configure_logging("info")
transformers_logging.get_logger("transformers.modeling_utils").warning("from transformers")
hub_logging.get_logger("huggingface_hub.file_download").warning("from huggingface_hub")
logging.getLogger("uvicorn.error").info("from uvicorn")
warnings.warn("from warnings", UserWarning, stacklevel=1)
"""
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    by_logger = {line["logger"]: line for line in lines}
    assert by_logger["transformers.modeling_utils"]["msg"] == "from transformers"
    assert by_logger["huggingface_hub.file_download"]["msg"] == "from huggingface_hub"
    assert by_logger["uvicorn.error"]["msg"] == "from uvicorn"
    assert "from warnings" in by_logger["py.warnings"]["msg"]
    assert len(lines) == 4, lines
