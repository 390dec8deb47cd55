"""The one error renderer: every error the proxy answers with leaves here, in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` (the tree and the shape: `app/errors.py`).

- `error_response(error)`: a `ProxyError` as an HTTP answer, for routes and the pure-ASGI
  layers (auth, admission, body limit) alike.
- `install_error_handlers(app)`: what a route raises, and FastAPI's own refusals (an unknown
  path, a wrong method, a malformed parameter), answered the same way.
- `internal_error_response(request_id)`: the 500 for a bug, sent by the request observer
  (`app/api/observe.py`) when an exception escaped every handler.

    await error_response(Unauthorized("missing or invalid API key"))(scope, receive, send)
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.api.json_response import JsonResponse
from app.errors import ProxyError, error_body
from app.observability.request_context import note_error

INTERNAL_ERROR_MESSAGE = "internal error in clip-proxy"


def error_response(error: ProxyError, *, counted: bool = True) -> JsonResponse:
    """OpenAI's error shape with the error's status and headers. `counted` errors reach
    `clip_proxy_errors_total` and the request's log line; a readiness probe's 503 is not one."""
    if counted:
        note_error(error.label)
    return JsonResponse(error.to_body(), error.status_code, headers=error.headers)


def internal_error_response(request_id: str) -> JsonResponse:
    """The 500 for a bug. Not counted here: the observer records it as `internal_error`.
    It carries the request id itself, because it is sent past the observer's header hook."""
    error = ProxyError(INTERNAL_ERROR_MESSAGE)  # the tree's root: 500, server_error, no code
    return JsonResponse(error.to_body(), error.status_code, headers={"X-Request-ID": request_id})


def install_error_handlers(app: FastAPI) -> None:
    """Every error a route or FastAPI raises leaves in OpenAI's shape. Any other exception is
    a bug: the request observer logs it with its request id and answers
    `internal_error_response`."""

    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> JsonResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JsonResponse:
        error_type = "invalid_request_error"
        note_error(error_type)
        return JsonResponse(error_body(str(exc.errors()[0].get("msg")), error_type), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JsonResponse:
        error_type = "invalid_request_error"
        note_error(error_type)
        message = str(exc.detail)
        if exc.status_code == 404:  # no route: OpenAI's words for it
            message = f"Invalid URL ({request.method} {request.url.path})"
        return JsonResponse(error_body(message, error_type), exc.status_code, headers=exc.headers)
