"""Shared fixtures: the test CLIP checkpoint, the fake upstream, and real proxy servers.

Every proxy here is a real uvicorn server on a loopback port, reached over real sockets.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from app.config import Settings
from app.encoder.test_model import make_test_model
from app.main import create_app
from tests.metrics_text import sample, scrape
from tests.upstream_server import FakeUpstream

DATA = Path(__file__).parent / "data"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]


def data_url(path_or_bytes: Path | bytes, mime: str = "image/png") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    if isinstance(path_or_bytes, Path) and path_or_bytes.suffix == ".jpg":
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def unique_png(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG no test has sent before: a guaranteed miss in the feature cache."""
    import io
    import os

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyServer:
    """A clip-proxy app under a real uvicorn server in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)  # its `state.clip_proxy` exists once started
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> ProxyServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not answer {path} in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


def proxy_settings(model_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_base_url": upstream_url,
        "upstream_api_key": "sk-upstream-secret",
        "clip_model": str(model_dir),
        "device": "cpu",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    server = ProxyServer(proxy_settings(test_model_dir, upstream.base_url)).start()
    yield server
    server.stop()


@pytest.fixture
def start_proxy(
    test_model_dir: Path, upstream: FakeUpstream
) -> Iterator[Callable[..., ProxyServer]]:
    """Start a proxy with its own settings; stopped at the end of the test."""
    started: list[ProxyServer] = []

    def start(wait_ready: bool = True, **overrides: Any) -> ProxyServer:
        server = ProxyServer(proxy_settings(test_model_dir, upstream.base_url, **overrides))
        started.append(server.start(wait_ready=wait_ready))
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def reference_vectors(test_model_dir: Path) -> dict[str, np.ndarray]:
    """The seed's code path on the same checkpoint: CLIPProcessor + get_image_features + L2."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(test_model_dir)
    processor = CLIPProcessor.from_pretrained(test_model_dir)
    vectors = {}
    for name in PHOTOS:
        image = Image.open(DATA / name).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        # transformers 5 returns an output object; 4.x returned the tensor itself.
        features = getattr(features, "pooler_output", features)
        normalized = features / features.norm(dim=-1, keepdim=True)
        vectors[name] = normalized[0].numpy()
    return vectors


def parse_vector(text: str) -> np.ndarray:
    return np.array([float(value) for value in text.split(",")], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def metric_value(proxy_url: str, name: str, **labels: str) -> float:
    """One sample from the proxy's /metrics (0 when absent), e.g.
    `metric_value(url, "clip_proxy_cache_hits_total", backend="memory")`. An unlabelled
    series always exists, so its absence is a failure, not a zero."""
    text = scrape(proxy_url)
    if not labels:
        assert re.search(rf"^{re.escape(name)} ", text, re.M), f"{name} not in /metrics"
    return sample(text, name, **labels)


def images_encoded(proxy_url: str) -> float:
    """How many images the proxy's encoder has run (the sum of clip_proxy_batch_size)."""
    return metric_value(proxy_url, "clip_proxy_batch_size_sum")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI every tool the tests need is installed (.ci/run installs them), so a test
    that skips for a missing tool is a test that cannot fail: there it fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where it must run: {report.longrepr}"
