"""Fixtures of the operations tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.operations.served import Served
from tests.upstream_server import FakeUpstream


@pytest.fixture
def serve(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[Callable[..., Served]]:
    """Start `clip-proxy serve` with these settings (`environ=`: more variables) and wait
    until it is ready; every one started is stopped at the end, even one never ready."""
    started: list[Served] = []

    def start(*, environ: dict[str, str | None] | None = None, **settings: Any) -> Served:
        served = Served(test_model_dir, upstream, environ=environ, **settings)
        started.append(served)
        served.wait_ready()
        return served

    yield start
    for served in started:
        served.stop()
