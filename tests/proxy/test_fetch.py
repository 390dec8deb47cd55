"""Image URLs: fetched when allowed, refused (without a single connection) when not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.helpers import DATA, ProxyServer, serving
from tests.upstream_server import FakeUpstream

CAT = (DATA / "chelsea.png").read_bytes()


class ImageHost(ThreadingHTTPServer):
    """A loopback web server with images, redirects and a connection counter."""

    daemon_threads = True
    connections = 0

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        self.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self._send(200, CAT, {"Content-Type": "image/png"})
        elif self.path.startswith("/redirect?to="):
            self._send(302, b"", {"Location": self.path.split("=", 1)[1]})
        elif self.path.startswith("/loop"):
            self._send(302, b"", {"Location": "/loop"})
        elif self.path == "/big":
            self._send(200, b"\0" * 3_000_000, {"Content-Type": "image/png"})
        elif self.path == "/cut":
            # Promises the whole image, sends a tenth of it and hangs up.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(CAT)))
            self.end_headers()
            self.wfile.write(CAT[: len(CAT) // 10])
            self.close_connection = True
        else:
            self._send(404, b"nope", {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    with serving(ImageHost(("127.0.0.1", 0), Handler)) as server:
        yield server


def ask(proxy: ProxyServer, url: str) -> httpx.Response:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
    }
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)


@pytest.fixture
def trusting_proxy(start_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    """A proxy told that loopback is a trusted network (as an operator might for a LAN)."""
    return start_proxy(fetch_allow_networks="127.0.0.0/8", max_image_bytes=2_000_000)


def test_allowed_url_is_fetched_and_encoded(
    trusting_proxy: ProxyServer, image_host: ImageHost, upstream: FakeUpstream
) -> None:
    port = image_host.server_address[1]
    response = ask(trusting_proxy, f"http://127.0.0.1:{port}/cat.png")
    assert response.status_code == 200
    assert "<image>" in upstream.requests[-1].json["messages"][0]["content"]


def test_redirects_are_followed_up_to_the_limit(
    trusting_proxy: ProxyServer, image_host: ImageHost
) -> None:
    port = image_host.server_address[1]
    assert ask(trusting_proxy, f"http://127.0.0.1:{port}/redirect?to=/cat.png").status_code == 200
    looped = ask(trusting_proxy, f"http://127.0.0.1:{port}/loop")
    assert looped.status_code == 400
    assert "more than 5 redirects" in looped.json()["error"]["message"]


def test_fetch_failures_are_client_errors(
    trusting_proxy: ProxyServer, image_host: ImageHost
) -> None:
    port = image_host.server_address[1]
    missing = ask(trusting_proxy, f"http://127.0.0.1:{port}/missing.png")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "image_fetch_failed"
    big = ask(trusting_proxy, f"http://127.0.0.1:{port}/big")
    assert big.status_code == 413
    assert big.json()["error"]["param"] == "messages[0].content[1].image_url"
    # The body breaks off after the headers: still the image's fault, not the proxy's.
    cut = ask(trusting_proxy, f"http://127.0.0.1:{port}/cut")
    assert cut.status_code == 400
    assert cut.json()["error"]["code"] == "image_fetch_failed"
    assert cut.json()["error"]["param"] == "messages[0].content[1].image_url"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ],
)
def test_loopback_in_any_spelling_is_refused_without_connecting(
    proxy: ProxyServer, image_host: ImageHost, host: str
) -> None:
    port = image_host.server_address[1]
    response = ask(proxy, f"http://{host}:{port}/cat.png")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "forbidden_url"
    assert error["param"] == "messages[0].content[1].image_url"
    assert image_host.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://172.16.5.4/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x.png",
        "http://[fe80::1]/x.png",
        "http://224.0.0.1/x.png",
        "http://[64:ff9b::7f00:1]/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
def test_private_and_odd_urls_are_refused(proxy: ProxyServer, url: str) -> None:
    response = ask(proxy, url)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "forbidden_url"


def test_redirect_to_loopback_is_refused(
    start_proxy: Callable[..., ProxyServer], image_host: ImageHost
) -> None:
    # "localhost" is trusted by name; the redirect target (127.0.0.1) is checked on its own.
    proxy = start_proxy(fetch_allow_hosts="localhost")
    port = image_host.server_address[1]
    target = f"http://127.0.0.1:{port}/cat.png"
    response = ask(proxy, f"http://localhost:{port}/redirect?to={target}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "forbidden_url"
    assert image_host.connections == 1  # the redirect itself, never the target
