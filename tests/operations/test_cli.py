"""The console script as a user runs it: make a test model, serve it, ask it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.engine.caption import Captioner
from app.engine.clip import ClipImageEncoder
from app.engine.preprocess import preprocess
from tests.helpers import DATA, data_url, free_port
from tests.processes import scaled
from tests.upstream_server import FakeUpstream

CLI = shutil.which("clip-proxy") or ""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [CLI, *args] if CLI else [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_make_test_model_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    run_cli("make-test-model", str(tmp_path / "m"), "--projection-dim", "64")
    names = {path.name for path in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    encoder = ClipImageEncoder.load(str(tmp_path / "m"), "cpu", "auto")
    with Image.open(DATA / "coffee.png") as image:
        vector = encoder.encode(preprocess(image.convert("RGB"), encoder.spec)[None])[0]
    assert vector.shape == (64,)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    # Beside it, the tiny captioner CLIP_PROXY_CAPTION_MODEL loads offline.
    captioner = Captioner.load(
        str(tmp_path / "m" / "captioner"),
        "cpu",
        decode=lambda data, param: Image.new("RGB", (1, 1)),
    )
    with Image.open(DATA / "coffee.png") as image:
        (caption,) = captioner.caption([image.convert("RGB")])
    assert isinstance(caption, str) and caption


def test_serve_answers_a_chat_with_an_image(test_model_dir: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
        "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
        "CLIP_PROXY_DEVICE": "cpu",
    }
    command = [CLI] if CLI else [sys.executable, "-m", "app.cli"]
    process = subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + scaled(60)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        body = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(DATA / "rocket.jpg")}}
                    ],
                }
            ]
        }
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200
        assert upstream.requests[-1].json["messages"][0]["content"].startswith("<image>")
    finally:
        process.terminate()
        process.wait(timeout=30)
