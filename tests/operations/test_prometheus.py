"""A real Prometheus server scrapes the proxy; the dashboard's queries run against it.

Prometheus (the Debian package, installed by scripts/setup.sh) runs on loopback with a
temporary config that scrapes the test proxy every second and its own storage in a temp
directory. Without the binary the tests skip on a developer machine and fail under CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ProxyServer, exported_names, free_port, sample, scrape
from tests.processes import scaled

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "clip-proxy.json"
CHAT = "/v1/chat/completions"
# What Grafana would put in place of the dashboard's variables.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer; a PromQL error comes back as status "error" (HTTP 400)."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        answer: dict[str, Any] = response.json()
        return answer

    def value(self, expr: str) -> float | None:
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, accept: Callable[[float], bool], timeout_s: float = 30) -> float:
        deadline = time.monotonic() + scaled(timeout_s)
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen is not None and accept(seen):
                return seen
            time.sleep(0.25)
        raise AssertionError(f"{expr} never satisfied the test; last value {seen}")


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; scripts/setup.sh installs it")
        pytest.skip("prometheus is not installed (run scripts/setup.sh)")
    return binary


@pytest.fixture(scope="module")
def prometheus(
    proxy: ProxyServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: clip-proxy\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{proxy.port}']\n"
    )
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline:
            assert process.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(server.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("prometheus did not become ready in 30 s")
        server.wait_for('up{job="clip-proxy"}', lambda up: up == 1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def test_prometheus_sees_the_requests_and_their_latency(
    proxy: ProxyServer, prometheus: Prometheus
) -> None:
    count_expr = f'sum(clip_proxy_requests_total{{route="{CHAT}", status="2xx"}})'
    before = sample(scrape(proxy.url), "clip_proxy_requests_total", route=CHAT, status="2xx")
    for _ in range(3):
        response = httpx.post(
            proxy.url + CHAT, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
        )
        assert response.status_code == 200
    # The next scrapes carry exactly our three requests on top of what came before.
    assert prometheus.wait_for(count_expr, lambda seen: seen >= before + 3) == before + 3
    histogram = f'sum(clip_proxy_request_duration_seconds_count{{route="{CHAT}", status="2xx"}})'
    assert prometheus.value(histogram) == before + 3
    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) "
        f'(clip_proxy_request_duration_seconds_bucket{{route="{CHAT}"}}))'
    )
    assert p99 is not None and 0 < p99 <= 300


def dashboard_expressions() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


def with_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def test_dashboard_uses_only_metrics_the_proxy_exports(proxy: ProxyServer) -> None:
    exported = exported_names(scrape(proxy.url))
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    used: set[str] = set()
    for expr in expressions:
        names = set(re.findall(r"\bclip_proxy_[a-z0-9_]+", expr))
        assert names, f"an expression that reads no clip-proxy metric: {expr}"
        used |= names
    assert used - exported == set()
    # The panels: VRAM, TTFT, batch size, queue, errors, in-flight, stage latency.
    for needed in (
        "clip_proxy_gpu_memory_used_bytes",
        "clip_proxy_upstream_ttft_seconds_bucket",
        "clip_proxy_batch_size_bucket",
        "clip_proxy_encode_queue_seconds_sum",
        "clip_proxy_errors_total",
        "clip_proxy_requests_in_flight",
        "clip_proxy_image_fetch_seconds_bucket",
        "clip_proxy_encode_duration_seconds_bucket",
    ):
        assert needed in used, needed


def test_every_dashboard_query_runs_in_prometheus(prometheus: Prometheus) -> None:
    for expr in dashboard_expressions():
        answer = prometheus.query(with_grafana_variables(expr))
        assert answer["status"] == "success", (expr, answer.get("error"))


def test_example_scrape_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        prometheus_binary()  # fails under CI, skips elsewhere
        pytest.skip("promtool is not installed")
    config = DASHBOARD.parent.parent / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
