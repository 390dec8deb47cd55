"""schemathesis against the app's own OpenAPI schema: generated requests (valid and not)
to every documented operation; none may get a 5xx.

Run as the real schemathesis CLI against a real proxy and the test upstream, bounded in
examples and time so it stays a few tens of seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ProxyServer, proxy_settings
from tests.upstream_server import FakeUpstream

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def fuzzed_proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    settings = proxy_settings(test_model_dir, upstream.base_url, fetch_timeout_s=1)
    server = ProxyServer(settings).start()
    yield server
    server.stop()


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is in the test extra")
def test_no_server_errors(fuzzed_proxy: ProxyServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            fuzzed_proxy.url + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "100",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "5",
            # One worker: hypothesis describes strategies with `ast.parse`, and CPython 3.11's
            # parser is not safe in two threads at once ("AST constructor recursion depth
            # mismatch", a fuzzer error that failed a CI run, not a proxy error).
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    assert re.search(r"\d+ generated, \d+ passed\n", summary), summary
    assert "failed" not in summary and "errored" not in summary, summary
    # Every operation was exercised, the chat and embeddings routes' documented bodies included.
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    assert selected and tested and selected[1] == selected[2] == tested[1], summary
    assert int(tested[1]) >= 6
