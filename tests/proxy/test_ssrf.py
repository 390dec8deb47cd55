"""SSRF corpus: image URLs that point into the proxy's own network are all refused, in
every spelling, and a listener on loopback never sees a connection.

A positive control proves the fetcher really runs: an allowed host (127.0.0.2, allowed by
network for this test) is contacted, and its redirect to loopback is refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ProxyServer, proxy_settings
from tests.upstream_server import FakeUpstream


class Listener:
    """Counts TCP connections to one port on 127.0.0.1 and ::1; answers a redirect."""

    def __init__(self, hosts: list[str], port: int = 0, redirect_to: str = "") -> None:
        self.connections = 0
        self.redirect_to = redirect_to
        self.sockets: list[socket.socket] = []
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(16)
            self.sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        self.port = port

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                location = self.redirect_to or "/"
                conn.sendall(
                    f"HTTP/1.1 302 Found\r\nLocation: {location}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def loopback() -> Iterator[Listener]:
    listener = Listener(["127.0.0.1"] + (["::1"] if has_ipv6_loopback() else []))
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def redirector(loopback: Listener) -> Iterator[Listener]:
    listener = Listener(["127.0.0.2"], redirect_to=f"http://127.0.0.1:{loopback.port}/cat.png")
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def ssrf_proxy(test_model_dir: Path, upstream: FakeUpstream) -> Iterator[ProxyServer]:
    settings = proxy_settings(
        test_model_dir, upstream.base_url, fetch_allow_networks="127.0.0.2/32", fetch_timeout_s=2
    )
    server = ProxyServer(settings).start()
    yield server
    server.stop()


def corpus(port: int) -> list[str]:
    hosts = [
        "127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "2130706433",
        "017700000001",
        "127.0.0.1.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:0:0:1]",
        "0.0.0.0",
        "0",
        "[::]",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "192.168.255.254",
        "169.254.169.254",
        "[fe80::1]",
        "100.64.0.1",
        "100.127.255.254",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
    ]
    urls = [f"http://{host}:{port}/cat.png" for host in hosts]
    urls += [
        f"http://user:pass@127.0.0.1:{port}/cat.png",
        f"https://127.0.0.1:{port}/cat.png",
        f"http://127.0.0.1:{port}@127.0.0.1:{port}/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        f"ftp://127.0.0.1:{port}/cat.png",
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/_GET",
    ]
    return urls


def ask(proxy: ProxyServer, url: str) -> httpx.Response:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": parts}]},
        headers={"X-Clip-Proxy-Dry-Run": "true"},
        timeout=30,
    )


def test_internal_targets_are_refused(ssrf_proxy: ProxyServer, loopback: Listener) -> None:
    urls = corpus(loopback.port)
    for url in urls:
        response = ask(ssrf_proxy, url)
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["code"] in ("forbidden_url", "image_fetch_failed"), (url, error)
        assert error["param"] == "messages[0].content[1].image_url", url
    assert loopback.connections == 0


def test_redirect_from_an_allowed_host_to_loopback_is_refused(
    ssrf_proxy: ProxyServer, loopback: Listener, redirector: Listener
) -> None:
    response = ask(ssrf_proxy, f"http://127.0.0.2:{redirector.port}/cat.png")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "forbidden_url"
    assert redirector.connections == 1  # the allowed host was fetched: the check is real
    assert loopback.connections == 0
