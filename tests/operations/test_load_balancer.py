"""A real load balancer: nginx, running deploy/nginx/clip-proxy.conf, in front of two
`clip-proxy serve` processes on loopback that share a Redis cache and one fake upstream.

- A streamed reply crosses nginx chunk by chunk: the first chunk reaches the client
  before the upstream has sent its last.
- An image encoded through one replica is a cache hit on the other.
- SIGTERM to one replica during live streams loses nothing: its streams finish, and nginx
  sends new requests to the other replica.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.deploy_files import ROOT, find_nginx, nginx_test_config
from tests.helpers import DATA, data_url, free_port, parse_vector
from tests.processes import scaled
from tests.upstream_server import FakeUpstream, Reply

REDIS_URL = "redis://127.0.0.1:6379/7"  # db 7: this module's own, apart from other tests
ANSWER = "A cat on a sofa."  # what the fake upstream's default stream spells out


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Replica:
    """`clip-proxy serve` in its own process, configured through CLIP_PROXY_* only."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # `python -m app.cli` is the `clip-proxy` console script, run from this checkout.
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout_s} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metric(self, name: str) -> float:
        """The sum of every series of `name`, whatever its labels (0 when it has none)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        values = re.findall(rf"(?m)^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text)
        return sum(float(value) for value in values)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class Nginx:
    """nginx in the foreground with the test's config; its access log names each upstream."""

    def __init__(self, prefix: Path, replicas: list[Replica]) -> None:
        binary = find_nginx()
        assert binary is not None
        self.binary = binary
        self.port = free_port()
        self.prefix = prefix
        self.config = nginx_test_config(self.port, [r.port for r in replicas], prefix)
        # Which replica served each request: `$upstream_addr` lists every one tried.
        text = self.config.read_text().replace(
            f"    access_log {prefix}/access.log;\n",
            "    log_format lb '$http_x_test_id|$status|$upstream_addr|$upstream_status';\n"
            f"    access_log {prefix}/access.log lb;\n",
        )
        self.config.write_text(text)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config), "-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + scaled(10)
        while not port_open(self.port):
            assert self.process.poll() is None, (self.prefix / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def access_log(self) -> list[list[str]]:
        lines = (self.prefix / "access.log").read_text().splitlines()
        return [line.split("|") for line in lines]


@dataclass
class Cluster:
    nginx: Nginx
    replicas: list[Replica]
    upstream: FakeUpstream

    def restart_stopped(self) -> None:
        """A test that stopped a replica leaves it stopped; the next test starts it again."""
        stopped = [r for r in self.replicas if r.process is None or r.process.poll() is not None]
        for replica in stopped:
            replica.start()
        for replica in stopped:
            replica.wait_ready()


@pytest.fixture(scope="module")
def running_cluster(
    test_model_dir: Path, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if find_nginx() is None:
        pytest.skip("nginx is not installed (scripts/setup.sh installs it)")
    if not port_open(6379):
        pytest.skip("no Redis on 127.0.0.1:6379 (.ci/run starts one)")
    prefix = tmp_path_factory.mktemp("lb")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIP_PROXY_")}
    env |= {
        "CLIP_PROXY_UPSTREAM_BASE_URL": upstream.base_url,
        "CLIP_PROXY_UPSTREAM_API_KEY": "sk-upstream-secret",
        "CLIP_PROXY_CLIP_MODEL": str(test_model_dir),
        "CLIP_PROXY_DEVICE": "cpu",
        "CLIP_PROXY_CACHE_URL": REDIS_URL,
    }
    replicas = [Replica(name, env, prefix) for name in ("replica-a", "replica-b")]
    nginx = Nginx(prefix, replicas)
    try:
        for replica in replicas:  # both load the model at the same time
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        nginx.start()
        yield Cluster(nginx, replicas, upstream)
    finally:
        nginx.stop()
        for replica in replicas:
            replica.stop()


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    running_cluster.restart_stopped()
    return running_cluster


def chat(image: str | None = None, *, stream: bool = True) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "What is in the picture?"}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {
        "model": "deepseek-r1",
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    }


@dataclass
class StreamResult:
    status: int
    content_type: str
    events: list[str] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)

    @property
    def answer(self) -> str:
        import json

        text = ""
        for event in self.events:
            if event != "[DONE]":
                for choice in json.loads(event)["choices"]:
                    text += choice["delta"].get("content") or ""
        return text

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.events[-1:] == ["[DONE]"] and self.answer == ANSWER


def read_stream(
    url: str, body: dict[str, Any], first_event: threading.Event | None = None, tag: str = ""
) -> StreamResult:
    # X-Test-Id only labels the request in nginx's access log.
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"X-Test-Id": tag}
        ) as response,
    ):
        result = StreamResult(response.status_code, response.headers.get("content-type", ""))
        for line in response.iter_lines():
            if line.startswith("data: "):
                result.events.append(line.removeprefix("data: "))
                result.arrived_at.append(time.monotonic())
                if first_event is not None:
                    first_event.set()
    return result


def test_a_stream_crosses_nginx_chunk_by_chunk(cluster: Cluster) -> None:
    cluster.upstream.script(Reply(chunk_delay_s=0.25))
    photo = data_url(DATA / "camera.png")
    result = read_stream(cluster.nginx.url, chat(photo))

    assert result.complete, result
    assert result.content_type.startswith("text/event-stream")
    sent = cluster.upstream.chunk_sent_at
    assert len(sent) == len(result.events) == 9
    # The first event is read while the upstream still has seven to send (0.25 s apart);
    # a buffering balancer would hand everything over after the last one.
    assert result.arrived_at[0] < sent[-1] - 1.0
    for arrived, upstream_sent in zip(result.arrived_at, sent, strict=True):
        assert arrived - upstream_sent < 0.5
    # It went through a replica (the access log names one), not around nginx.
    addresses = {replica.address for replica in cluster.replicas}
    assert cluster.nginx.access_log()[-1][2] in addresses


def random_photo() -> str:
    """A picture no earlier run has sent, so the first encode is a miss in any cache."""
    pixels = np.random.default_rng().integers(0, 256, (96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return data_url(buffer.getvalue())


def sent_vector(recorded_json: dict[str, Any]) -> np.ndarray:
    content = recorded_json["messages"][-1]["content"]
    match = re.search(r"<image>([^<]+)</image>", content)
    assert match, content
    return parse_vector(match.group(1))


def test_an_image_encoded_by_one_replica_is_a_cache_hit_on_the_other(cluster: Cluster) -> None:
    photo = random_photo()
    before = {
        r.name: (r.metric("clip_proxy_batch_size_sum"), r.metric("clip_proxy_cache_hits_total"))
        for r in cluster.replicas
    }
    first = httpx.post(
        cluster.nginx.url + "/v1/chat/completions", json=chat(photo, stream=False), timeout=30
    )
    assert first.status_code == 200, first.text
    encoded = [
        r
        for r in cluster.replicas
        if r.metric("clip_proxy_batch_size_sum") == before[r.name][0] + 1
    ]
    assert len(encoded) == 1, "exactly one replica encoded the new picture"
    other = next(r for r in cluster.replicas if r is not encoded[0])

    second = httpx.post(
        other.url + "/v1/chat/completions", json=chat(photo, stream=False), timeout=30
    )
    assert second.status_code == 200, second.text
    assert other.metric("clip_proxy_cache_hits_total") == before[other.name][1] + 1
    assert other.metric("clip_proxy_batch_size_sum") == before[other.name][0]  # not encoded
    vectors = [sent_vector(request.json) for request in cluster.upstream.requests[-2:]]
    assert np.array_equal(vectors[0], vectors[1])


def test_sigterm_to_a_replica_during_live_streams_loses_no_request(cluster: Cluster) -> None:
    """Streams on the terminated replica finish; nginx sends new requests to the other."""
    streams = 6
    cluster.upstream.script(*[Reply(chunk_delay_s=0.3) for _ in range(streams)])
    victim, survivor = cluster.replicas[1], cluster.replicas[0]
    assert victim.process is not None
    first_events = [threading.Event() for _ in range(streams)]
    log_before = len(cluster.nginx.access_log())
    with ThreadPoolExecutor(max_workers=streams + 4) as pool:
        live = [
            pool.submit(read_stream, cluster.nginx.url, chat(), event, f"live-{i}")
            for i, event in enumerate(first_events)
        ]
        for event in first_events:  # every stream is under way on some replica
            assert event.wait(timeout=30)
        victim.process.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        # New requests during the drain, until the victim has exited.
        later = []
        while victim.process.poll() is None and time.monotonic() - terminated_at < 20:
            later.append(pool.submit(read_stream, cluster.nginx.url, chat(), None, "later"))
            time.sleep(0.2)
        later.append(pool.submit(read_stream, cluster.nginx.url, chat(), None, "last"))
        live_results = [future.result(timeout=60) for future in live]
        later_results = [future.result(timeout=60) for future in later]
    victim.process.wait(timeout=30)

    assert [result.complete for result in live_results] == [True] * streams
    assert [result.complete for result in later_results] == [True] * len(later_results)
    # uvicorn shuts down gracefully, then re-raises SIGTERM: exit status 143 / -15.
    assert victim.process.returncode in (0, -signal.SIGTERM), victim.log_tail()
    assert "Application shutdown complete" in victim.log_tail()
    entries = cluster.nginx.access_log()[log_before:]
    assert len(entries) == streams + len(later_results)
    assert all(entry[1] == "200" for entry in entries), entries
    # The victim had live streams when it got SIGTERM, and finished them (they are
    # complete above, and nginx cannot move a stream that has begun).
    live_on_victim = [e for e in entries if e[0].startswith("live-") and e[2] == victim.address]
    assert live_on_victim, entries
    # A request after the victim exited went to the survivor (nginx may try the
    # victim first and move on: `$upstream_addr` then lists both).
    last = next(entry for entry in entries if entry[0] == "last")
    assert last[2].split(", ")[-1] == survivor.address
