"""CORS for browser apps: `CLIP_PROXY_CORS_ALLOW_ORIGINS` names the origins whose pages may
call the API (default none: browsers keep other origins out, as before).

Starlette's `CORSMiddleware`, with three changes: a preflight is answered 204 (no body);
the headers the SDKs send are allowed by family (every `x-stainless-*` and
`X-Clip-Proxy-*` header, whatever SDK version adds next); and a page on a public origin may
call a proxy on a private address (Chrome's Private Network Access asks first).

It sits outermost, so every answer carries the headers: the auth layer's 401, the
admission layer's 503, a route's 400 and the observer's 500 alike. Without them a browser
hides the error from the page and reports only "Failed to fetch".

    app.add_middleware(Cors, origins=["https://app.example.com"])
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

ALLOWED_METHODS = ("GET", "POST", "OPTIONS")
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "x-request-id",
    "traceparent",
    "tracestate",
    "openai-organization",
    "openai-project",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
)
# Header families allowed whole: the SDKs' telemetry (`x-stainless-lang`, ...-retry-count,
# ...-timeout) and the proxy's own request headers (`X-Clip-Proxy-Dry-Run`, -Preset).
ALLOWED_PREFIXES = ("x-stainless-", "x-clip-proxy-")
EXPOSED_HEADERS = (
    "x-request-id",
    "server-timing",
    "retry-after",
    "x-clip-proxy-prompt-chars",
    "x-clip-proxy-format",
)
PREFLIGHT_MAX_AGE_S = 600


class Cors(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_private_network=True,
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        requested = [
            name.strip().lower()
            for name in request_headers.get("access-control-request-headers", "").split(",")
            if name.strip()
        ]
        family = [name for name in requested if name.startswith(ALLOWED_PREFIXES)]
        if family:
            # Judged by Starlette without them; allowed back by name (a preflight answer
            # cannot say "x-stainless-*").
            rest = [name for name in requested if name not in family]
            raw = [
                (key, value)
                for key, value in request_headers.raw
                if key != b"access-control-request-headers"
            ]
            if rest:
                raw.append((b"access-control-request-headers", ", ".join(rest).encode()))
            request_headers = Headers(raw=raw)
        answer = super().preflight_response(request_headers=request_headers)
        if answer.status_code != 200:
            return answer  # 400 "Disallowed CORS origin" (or method, headers): a refusal
        headers = dict(answer.headers)
        headers.pop("content-length", None)
        headers.pop("content-type", None)
        if family:
            allowed = headers.get("access-control-allow-headers", "")
            headers["access-control-allow-headers"] = ", ".join([allowed, *family]).strip(", ")
        return Response(status_code=204, headers=headers)
