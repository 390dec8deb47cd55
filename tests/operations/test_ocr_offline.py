"""`clip-proxy serve` with OCR on reads a screenshot without reaching outside: every HTTP
client in the process is pointed at a recording egress proxy (HTTP_PROXY, HTTPS_PROXY,
ALL_PROXY), and the egress proxy sees no request (RapidOCR 3.x downloads its models
unless told where they are; the proxy gives it the files inside its wheel)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.egress_proxy import EgressProxy
from tests.helpers import data_url, free_port, image_message, text_png
from tests.processes import log_tail, scaled
from tests.upstream_server import FakeUpstream

CLI = shutil.which("clip-proxy") or ""


def test_ocr_serves_offline_with_no_request_through_the_egress_proxy(
    test_model_dir: Path, upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with EgressProxy() as egress:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CLIP_PROXY_")},
            "HTTP_PROXY": egress.url,
            "HTTPS_PROXY": egress.url,
            "ALL_PROXY": egress.url,
            "NO_PROXY": "",
            "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,  # loopback: sent direct
            "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
            "CLIP_PROXY_DEVICE": "cpu",
            "CLIP_PROXY_OCR_ENABLED": "true",
            "CLIP_PROXY_OCR_THREADS": "1",
            "CLIP_PROXY_PROMPT_PRESET": "describe",
        }
        command = [CLI] if CLI else [sys.executable, "-m", "app.cli"]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + scaled(120)
            with httpx.Client(trust_env=False, timeout=120) as client:
                while True:
                    assert process.poll() is None, log_tail(log)
                    assert time.monotonic() < deadline, "not ready in time\n" + log_tail(log)
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(url + "/readyz").status_code == 200:
                            break
                    time.sleep(0.1)
                shot = data_url(text_png(["offline and on time"]))
                body = {"messages": [image_message(shot, "Read it.")]}
                reply = client.post(
                    url + "/v1/chat/completions",
                    json=body,
                    headers={"X-Clip-Proxy-Dry-Run": "true"},
                )
            assert reply.status_code == 200, reply.text
            content = reply.json()["messages"][0]["content"]
            assert "offline and on time" in content, content
        finally:
            process.terminate()
            process.wait(timeout=30)
        assert egress.requests == [], egress.requests
