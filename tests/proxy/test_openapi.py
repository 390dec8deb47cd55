"""`/openapi.json` held against the routes: every route and no other, every request body
(chat as JSON and as multipart, embeddings), the statuses really returned and no phantom
422. And `/docs` in a real browser: Swagger UI from the proxy itself (no CDN), under the
playground's Content-Security-Policy, showing the operations."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from app.api.playground import CONTENT_SECURITY_POLICY
from tests.browser import headless_chromium
from tests.helpers import DATA, ProxyServer
from tests.upstream_server import FakeUpstream, Reply

CHAT = "/v1/chat/completions"
KEY = "sk-client-openapi-31c"


def api_routes(routes: Any) -> Iterator[APIRoute]:
    """Every route of the app, through the routers it includes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI 0.16x's included router
            yield from api_routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            yield from api_routes(route.routes)


def schema_of(proxy: ProxyServer, **headers: str) -> dict[str, Any]:
    reply = httpx.get(proxy.url + "/openapi.json", headers=headers, timeout=10)
    assert reply.status_code == 200
    return reply.json()  # type: ignore[no-any-return]


def test_the_schema_lists_every_route_and_no_other(proxy: ProxyServer) -> None:
    schema = schema_of(proxy)
    documented = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
    }
    routes = {
        (method, route.path_format.replace(":path", ""))
        for route in api_routes(proxy.app.routes)
        if route.include_in_schema
        for method in route.methods or ()
    }
    assert documented == routes
    assert ("POST", CHAT) in documented and ("GET", "/v1/models/{model_id}") in documented


def test_no_phantom_422_and_every_body_is_described(proxy: ProxyServer) -> None:
    schema = schema_of(proxy)
    assert '"422"' not in httpx.get(proxy.url + "/openapi.json").text
    assert "HTTPValidationError" not in str(schema.get("components", {}))
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method == "post":
                assert operation["requestBody"]["required"] is True, path
    chat = schema["paths"][CHAT]["post"]["requestBody"]["content"]
    assert chat["application/json"]["schema"]["required"] == ["messages"]
    form = chat["multipart/form-data"]["schema"]["properties"]
    assert form["image"]["items"] == {"type": "string", "format": "binary"}
    assert {"model", "prompt", "messages", "stream"} <= set(form)
    embeddings = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert embeddings["application/json"]["schema"]["required"] == ["input"]
    model = schema["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert "404" in model and "error" in str(model["404"]["content"])
    streamed = schema["paths"][CHAT]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in streamed


def test_the_statuses_returned_are_documented(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(api_keys=KEY, max_body_bytes=100_000)
    auth = {"Authorization": f"Bearer {KEY}"}
    paths = schema_of(proxy, **auth)["paths"]
    not_found = {"error": {"message": "no", "type": "invalid_request_error"}}
    upstream.script(Reply(status=404, body=not_found), Reply(body={"object": "list", "data": []}))
    png = base64.b64encode((DATA / "camera.png").read_bytes()).decode()
    seen = [
        ("post", CHAT, httpx.post(proxy.url + CHAT, json={"model": "x"}, headers=auth)),
        ("post", CHAT, httpx.post(proxy.url + CHAT, json={}, timeout=10)),  # no key
        ("post", CHAT, httpx.post(proxy.url + CHAT, content=b"x" * 200_000, headers=auth)),
        (
            "post",
            CHAT,
            httpx.post(proxy.url + CHAT, data={"prompt": "hi"}, files={"image": png}, headers=auth),
        ),
        ("post", "/v1/embeddings", httpx.post(proxy.url + "/v1/embeddings", json={}, headers=auth)),
        (
            "get",
            "/v1/models/{model_id}",
            httpx.get(proxy.url + "/v1/models/nope", headers=auth, timeout=10),
        ),
        ("get", "/v1/models", httpx.get(proxy.url + "/v1/models", timeout=10)),
        ("get", "/readyz", httpx.get(proxy.url + "/readyz", timeout=10)),
        ("get", "/healthz", httpx.get(proxy.url + "/healthz", timeout=10)),
    ]
    statuses = {reply.status_code for _, _, reply in seen}
    assert {400, 401, 404, 413} <= statuses  # the requests above did reach those answers
    for method, path, reply in seen:
        documented = paths[path][method]["responses"]
        assert str(reply.status_code) in documented, (path, reply.status_code, reply.text)


def test_an_unknown_docs_file_is_a_404(proxy: ProxyServer) -> None:
    reply = httpx.get(proxy.url + "/docs/secret.py", timeout=10)
    assert reply.status_code == 404 and reply.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with headless_chromium(tmp_path_factory.mktemp("chromium-docs")) as driver:
        yield driver


def test_docs_render_offline_under_the_csp(
    browser: Any, proxy: ProxyServer, tmp_path: Path
) -> None:
    page = httpx.get(proxy.url + "/docs", timeout=10)
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(proxy.url + "/docs")
    from selenium.webdriver.support.ui import WebDriverWait

    def operations() -> list[str]:
        script = "return [...document.querySelectorAll('.opblock-summary-path')]"
        return [str(text) for text in browser.execute_script(script + ".map(e => e.textContent)")]

    try:
        WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda _: CHAT in operations())
    finally:
        browser.save_screenshot(str(tmp_path / "docs.png"))
    assert "/v1/embeddings" in operations() and "/v1/models/{model_id}" in operations()
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(proxy.url) for url in loaded), loaded
    refused = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    assert not refused, refused
