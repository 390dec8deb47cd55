"""CORS for browser apps (`CLIP_PROXY_CORS_ALLOW_ORIGINS`): the preflight, the headers on
answers and on errors, the refusals, and a real page on another origin calling the proxy
with fetch in headless Chromium (allowed, and refused)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.browser import headless_chromium
from tests.helpers import ProxyServer, free_port

CHAT = "/v1/chat/completions"
KEY = "sk-client-cors-7d1f"
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


class PageServer:
    """A web page on its own origin (another port of loopback): the app that calls the proxy."""

    def __init__(self) -> None:
        page = b"<!doctype html><title>app</title><p>an app on another origin</p>"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def page() -> Iterator[PageServer]:
    server = PageServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


APP_ORIGIN = "https://app.example.com"


@pytest.fixture
def cors_proxy(start_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return start_proxy(cors_allow_origins=APP_ORIGIN, api_keys=KEY, wait_ready=False)


def preflight(proxy: ProxyServer, origin: str, headers: str) -> httpx.Response:
    return httpx.options(
        proxy.url + CHAT,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def test_a_preflight_is_answered_204_with_what_the_sdks_send(cors_proxy: ProxyServer) -> None:
    asked = "authorization, content-type, x-stainless-lang, x-stainless-retry-count, " + (
        "x-clip-proxy-dry-run"
    )
    reply = preflight(cors_proxy, APP_ORIGIN, asked)
    assert reply.status_code == 204 and reply.content == b""
    assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in reply.headers["access-control-allow-methods"]
    allowed = {
        name.strip().lower() for name in reply.headers["access-control-allow-headers"].split(",")
    }
    assert {name.strip() for name in asked.split(",")} <= allowed


def test_a_preflight_from_another_origin_is_refused(cors_proxy: ProxyServer) -> None:
    reply = preflight(cors_proxy, "https://evil.example", "authorization, content-type")
    assert reply.status_code == 400
    assert "access-control-allow-origin" not in reply.headers


def test_answers_and_errors_carry_the_cors_headers(cors_proxy: ProxyServer) -> None:
    origin = {"Origin": APP_ORIGIN}
    ok = httpx.post(
        cors_proxy.url + CHAT,
        json=HELLO,
        headers={**origin, "Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = ok.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "server-timing" in exposed
    for reply in (
        httpx.post(cors_proxy.url + CHAT, json=HELLO, headers=origin, timeout=10),  # auth's 401
        httpx.post(
            cors_proxy.url + CHAT,
            json={},
            headers={**origin, "Authorization": f"Bearer {KEY}"},
            timeout=10,
        ),  # a route's 400
        httpx.post(cors_proxy.url + "/v1/nowhere", headers=origin, timeout=10),
    ):
        assert reply.status_code >= 400
        assert reply.headers["access-control-allow-origin"] == APP_ORIGIN, reply.status_code


def test_without_the_setting_no_cors_headers(proxy: ProxyServer) -> None:
    reply = httpx.post(proxy.url + CHAT, json=HELLO, headers={"Origin": APP_ORIGIN}, timeout=30)
    assert reply.status_code == 200 and "access-control-allow-origin" not in reply.headers


def test_any_origin_with_client_keys_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(cors_allow_origins="*", api_keys=KEY)
    assert "CLIP_PROXY_CORS_ALLOW_ORIGINS" in str(raised.value)
    assert Settings(cors_allow_origins="*").cors_allow_origins == ["*"]
    assert Settings(cors_allow_origins="https://a.example/, http://b:8080").cors_allow_origins == [
        "https://a.example",
        "http://b:8080",
    ]
    with pytest.raises(ValidationError):
        Settings(cors_allow_origins="app.example.com")


# ---- In a real browser ----

# Runs in the page: the call an app makes with the openai SDK's headers, reported back.
FETCH = """
const [url, key, done] = arguments;
fetch(url, {
  method: "POST",
  headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
            "X-Stainless-Lang": "js", "X-Stainless-Retry-Count": "0"},
  body: JSON.stringify({messages: [{role: "user", content: "hi"}]}),
}).then(
  async (r) => done({status: r.status, requestId: r.headers.get("x-request-id"),
                     body: await r.json()}),
  (e) => done({failed: String(e)}),
);
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with headless_chromium(tmp_path_factory.mktemp("chromium-cors")) as driver:
        yield driver


def fetch_from_page(browser: Any, page: PageServer, proxy: ProxyServer, key: str) -> Any:
    browser.get(page.origin + "/")
    return browser.execute_async_script(FETCH, proxy.url + CHAT, key)


def test_a_page_on_an_allowed_origin_calls_the_proxy(
    browser: Any, page: PageServer, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = start_proxy(cors_allow_origins=page.origin, api_keys=KEY, wait_ready=False)
    result = fetch_from_page(browser, page, proxy, KEY)
    assert result.get("status") == 200, result
    assert result["body"]["choices"][0]["message"]["content"]
    assert result["requestId"]  # an exposed header, readable by the page
    # A refused key reaches the page as a 401 it can read, not as "Failed to fetch".
    wrong = fetch_from_page(browser, page, proxy, "sk-wrong")
    assert wrong.get("status") == 401, wrong
    assert wrong["body"]["error"]["code"] == "invalid_api_key"


def test_a_page_on_another_origin_is_refused(
    browser: Any, page: PageServer, start_proxy: Callable[..., ProxyServer]
) -> None:
    proxy = start_proxy(cors_allow_origins=APP_ORIGIN, api_keys=KEY, wait_ready=False)
    result = fetch_from_page(browser, page, proxy, KEY)
    assert "failed" in result and "Failed to fetch" in result["failed"], result
