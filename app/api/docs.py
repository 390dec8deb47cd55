"""`GET /docs`: Swagger UI for `/openapi.json`, served whole by the proxy, so it works
offline. Swagger UI's own files come from the `swagger-ui-bundle-v2` package (Swagger UI 5,
which reads OpenAPI 3.1 as FastAPI writes it), the page and its start-up script from
`app/docs/`: nothing is fetched from a CDN.

The page runs under the playground's Content-Security-Policy (app/api/playground.py):
scripts, styles and connections from this origin only, no inline script, no `eval`.

    app.include_router(docs_router(settings.docs))
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from app.api.playground import SECURITY_HEADERS

DOCS_PATH = "/docs"

# name -> media type, from the Swagger UI package
_SWAGGER_FILES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}
# name -> media type, from app/docs/
_OWN_FILES = {
    "index.html": "text/html; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}


def docs_router(enabled: bool) -> APIRouter:
    """The docs routes; none when `enabled` is false. The files (about 1.7 MB) are read
    once, at start: a missing one fails start-up, not the first visit."""
    router = APIRouter(include_in_schema=False)
    if not enabled:
        return router
    swagger = Path(swagger_ui_bundle.swagger_ui_path)
    own = resources.files("app") / "docs"
    files = {name: (swagger / name).read_bytes() for name in _SWAGGER_FILES}
    files |= {name: (own / name).read_bytes() for name in _OWN_FILES}
    types = _SWAGGER_FILES | _OWN_FILES

    def serve(name: str) -> Response:
        return Response(files[name], media_type=types[name], headers=SECURITY_HEADERS)

    @router.get(DOCS_PATH)
    async def page() -> Response:
        return serve("index.html")

    @router.get(DOCS_PATH + "/{name}")
    async def asset(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404)  # answered as any unknown path
        return serve(name)

    return router
