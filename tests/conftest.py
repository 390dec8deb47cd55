"""Shared fixtures: the test CLIP checkpoint, the fake upstream, and real proxy servers.

Every proxy here is a real uvicorn server on a loopback port, reached over real sockets.
Tests are grouped by what they exercise: unit/ (one module, no server), proxy/ (through a
real proxy), operations/ (the process, deployment and monitoring around it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.engine.pool import EncoderPool
from app.engine.test_model import make_test_captioner, make_test_model
from tests.helpers import DATA, PHOTOS, ProxyServer, proxy_settings
from tests.processes import end_leftovers, mark_session
from tests.upstream_server import FakeUpstream

SESSION_MARKER = mark_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every process the tests started is gone when the run ends; a `clip-proxy serve`
    still alive (a test that forgot it, or failed before its clean-up) fails the run."""
    killed = end_leftovers(SESSION_MARKER)
    if not killed:
        return
    lines = "\n".join(f"  pid {process.pid}: {process.command}" for process in killed)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"processes left running by the tests (killed):\n{lines}", red=True)
    if any(process.is_proxy for process in killed):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("clip") / "model")


@pytest.fixture(scope="session")
def captioner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random captioner (`CAPTION_MODEL`), made once for the run."""
    return make_test_captioner(tmp_path_factory.mktemp("captioner"))


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI every tool the tests need is installed (.ci/run installs them), so a test
    that skips for a missing tool is a test that cannot fail: there it fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where it must run: {report.longrepr}"


@pytest.fixture
def make_encoder_pool() -> Iterator[Callable[..., EncoderPool]]:
    """Started encoder pools over the given encoders (real or stand-ins), warm, stopped at
    the end of the test. Batches close at 8 images or after 100 ms unless told otherwise."""
    pools: list[EncoderPool] = []

    def make(*encoders: Any, **options: Any) -> EncoderPool:
        options.setdefault("max_batch", 8)
        options.setdefault("max_wait_ms", 100)
        pool = EncoderPool(list(encoders), **options)
        pool.start()
        pools.append(pool)
        assert pool.wait_ready(30)
        return pool

    yield make
    for pool in pools:
        pool.stop()
