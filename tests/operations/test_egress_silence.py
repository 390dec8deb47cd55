"""Nothing leaves a real `clip-proxy serve` but what the operator sent: with the describe
preset (OCR and tags loaded) and every proxy variable pointing at a recording egress proxy,
a minute of requests of every kind (chat with a data URL and with a fetched image URL,
embeddings, responses, messages) sends nothing through it while the upstream is on
loopback, and only the upstream's requests once the upstream has a non-loopback name.
ONNX Runtime's telemetry (issue 20: `CONNECT mobile.events.data.microsoft.com:443` within
15 s of start) would show here."""

from __future__ import annotations

import base64
import http.server
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.egress_proxy import EgressProxy, via_test_name
from tests.helpers import data_url, image_message, serving, text_png
from tests.operations.served import Served
from tests.processes import scaled
from tests.upstream_server import FakeUpstream

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
# The window the issue watched telemetry in was 15 s; a minute covers timers past start-up.
WINDOW_S = 60.0
ROUNDS = 5


class PageHost(http.server.ThreadingHTTPServer):
    """Serves a different small screenshot at every `/page-N.png`."""

    daemon_threads = True


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = text_png([f"fetched page {self.path}"])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_host() -> Iterator[PageHost]:
    with serving(PageHost(("127.0.0.1", 0), PageHandler)) as server:
        yield server


@pytest.fixture
def egress() -> Iterator[EgressProxy]:
    with EgressProxy() as proxy:
        yield proxy


@pytest.fixture
def serve_describing(serve: Callable[..., Served], egress: EgressProxy) -> Callable[..., Served]:
    """`serve` with the describe preset, OCR and every proxy variable naming `egress`."""

    def start(**settings: Any) -> Served:
        environ: dict[str, str | None] = {}
        for name in PROXY_VARIABLES:
            environ[name] = environ[name.lower()] = egress.url
        environ["NO_PROXY"] = environ["no_proxy"] = None
        return serve(
            environ=environ,
            prompt_preset="describe",
            ocr_enabled="true",
            fetch_allow_networks="127.0.0.0/8",
            **settings,
        )

    return start


def one_of_each(served: Served, page_port: int, seed: int) -> None:
    """A request of every kind, each with an image no earlier round sent (OCR runs)."""
    image = text_png([f"round {seed} screenshot", "nothing leaves"])
    b64 = base64.b64encode(image).decode()
    fetched = f"http://127.0.0.1:{page_port}/page-{seed}.png"
    source = {"type": "base64", "media_type": "image/png", "data": b64}
    calls = [
        ("/v1/chat/completions", {"messages": [image_message(data_url(image))]}),
        ("/v1/chat/completions", {"messages": [image_message(fetched)]}),
        ("/v1/embeddings", {"model": "clip", "input": [data_url(image), f"text {seed}"]}),
        (
            "/v1/responses",
            {
                "model": "deepseek-r1",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "what is this?"},
                            {"type": "input_image", "image_url": data_url(image)},
                        ],
                    }
                ],
            },
        ),
        (
            "/v1/messages",
            {
                "model": "deepseek-r1",
                "max_tokens": 50,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": source},
                            {"type": "text", "text": "what is this?"},
                        ],
                    }
                ],
            },
        ),
    ]
    # The test's own client goes direct: only the proxy under test has the variables.
    with httpx.Client(timeout=scaled(60), trust_env=False) as client:
        for path, body in calls:
            answer = client.post(served.url + path, json=body)
            assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"


def test_a_loopback_upstream_and_the_describe_preset_send_nothing_through_egress(
    serve_describing: Callable[..., Served],
    egress: EgressProxy,
    upstream: FakeUpstream,
    page_host: PageHost,
) -> None:
    served = serve_describing()
    started = time.monotonic()
    for round_ in range(ROUNDS):
        one_of_each(served, page_host.server_address[1], round_)
        # Spread over the window: the next round at its share of it (bounded: ROUNDS).
        time.sleep(max(0.0, started + (round_ + 1) * WINDOW_S / ROUNDS - time.monotonic()))
    assert len(upstream.requests) >= 3 * ROUNDS  # chat x2, responses, messages went upstream
    assert egress.requests == []


def test_a_named_upstream_is_the_only_thing_through_egress(
    serve_describing: Callable[..., Served],
    egress: EgressProxy,
    upstream: FakeUpstream,
    page_host: PageHost,
) -> None:
    served = serve_describing(upstream_base_url=via_test_name(upstream.base_url))
    for round_ in range(2):
        one_of_each(served, page_host.server_address[1], 100 + round_)
    upstream_host = f"upstream.test:{upstream.port}"
    assert egress.requests, "the upstream's requests did not go through the egress proxy"
    others = [line for line in egress.requests if upstream_host not in line]
    assert others == [], f"through the egress proxy besides the upstream: {others}"
