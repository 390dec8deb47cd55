"""The playground: a page served by the proxy itself to try it in a browser.

    app.include_router(playground_router(settings.playground))

`GET /playground` is one static HTML page with its script and stylesheet, shipped in the
package (`app/playground/`): no build step, no CDN, nothing fetched from anywhere but this
proxy, so it works offline. `GET /` redirects there. The page calls the public API
(`/v1/chat/completions`, streamed and as a dry run) like any client, with the user's key when
client keys are set; `GET /playground/config.json` tells it whether to ask for one.

Every playground response carries a Content-Security-Policy that allows scripts, styles and
connections from this origin only (no inline script, no `eval`), so text a model writes can
never run as code even if it reached the DOM as HTML (the script renders it as text anyway).
With `CLIP_PROXY_PLAYGROUND=false` the router is empty: both paths answer 404.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from app.api.json_response import JsonResponse

PAGE_PATH = "/playground"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # Thumbnails of the picked images are data: URLs read in the page.
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package: a browser revalidates instead of keeping an old copy.
    "Cache-Control": "no-cache",
}

# name in app/playground/ -> media type
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}


def _read_assets() -> dict[str, bytes]:
    folder = resources.files("app") / "playground"
    return {name: (folder / name).read_bytes() for name in _ASSETS}


def playground_router(enabled: bool, *, auth_required: bool, prompt_format: str) -> APIRouter:
    """The playground's routes; none at all when `enabled` is false. `auth_required` and
    `prompt_format` are what the page learns from `config.json` before its first request."""
    router = APIRouter(include_in_schema=False)
    if not enabled:
        return router
    assets = _read_assets()  # a few KiB, read once: a missing file fails at start-up

    def asset(name: str) -> Response:
        return Response(assets[name], media_type=_ASSETS[name], headers=SECURITY_HEADERS)

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse(PAGE_PATH, status_code=302)

    @router.get(PAGE_PATH)
    async def page() -> Response:
        return asset("index.html")

    @router.get(PAGE_PATH + "/playground.js")
    async def script() -> Response:
        return asset("playground.js")

    @router.get(PAGE_PATH + "/playground.css")
    async def stylesheet() -> Response:
        return asset("playground.css")

    @router.get(PAGE_PATH + "/config.json")
    async def config() -> JsonResponse:
        """What the page needs before the first request: whether to ask for a key, and the
        prompt format it gets when it asks for none."""
        body = {"auth_required": auth_required, "prompt_format": prompt_format}
        return JsonResponse(body, headers=SECURITY_HEADERS)

    return router
