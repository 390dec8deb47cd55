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

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app.api.json_response import JsonResponse
from app.dialects.anthropic_output import error_of
from app.errors import ProxyError, error_body
from app.observability.request_context import note_error

INTERNAL_ERROR_MESSAGE = "internal error in clip-proxy"


ANTHROPIC_PREFIX = "/v1/messages"


class ErrorResponse(JsonResponse):
    """An error answer in the shape of the path it answers: Anthropic's on `/v1/messages`
    (`app/dialects/anthropic_output.py`), OpenAI's everywhere else. Decided when sent, so the
    pure-ASGI layers (auth, admission, body limit) answer each dialect in its own words."""

    def __init__(self, body: dict[str, Any], status_code: int, headers: dict[str, str]) -> None:
        super().__init__(body, status_code, headers=headers)
        self.error_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope.get("path", "")).startswith(ANTHROPIC_PREFIX):
            error = self.body_error
            status, body = error_of(self.status_code, str(error.get("message") or ""))
            answer = JsonResponse(body, status, headers=self.error_headers)
            await answer(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    @property
    def body_error(self) -> dict[str, Any]:
        parsed = orjson.loads(self.body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        return error if isinstance(error, dict) else {}


def error_response(error: ProxyError, *, counted: bool = True) -> JsonResponse:
    """OpenAI's error shape (Anthropic's on /v1/messages) with the error's status and headers.
    `counted` errors reach `clip_proxy_errors_total` and the request's log line; a readiness
    probe's 503 is not one."""
    if counted:
        note_error(error.label)
    return ErrorResponse(error.to_body(), error.status_code, error.headers)


def internal_error_response(request_id: str) -> JsonResponse:
    """The 500 for a bug. Not counted here: the observer records it as `internal_error`.
    It carries the request id itself, because it is sent past the observer's header hook."""
    error = ProxyError(INTERNAL_ERROR_MESSAGE)  # the tree's root: 500, server_error, no code
    return ErrorResponse(error.to_body(), error.status_code, {"X-Request-ID": request_id})


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
        return ErrorResponse(error_body(str(exc.errors()[0].get("msg")), error_type), 400, {})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JsonResponse:
        error_type = "invalid_request_error"
        note_error(error_type)
        message = str(exc.detail)
        if exc.status_code == 404:  # no route: OpenAI's words for it
            message = f"Invalid URL ({request.method} {request.url.path})"
        headers = dict(exc.headers or {})
        return ErrorResponse(error_body(message, error_type), exc.status_code, headers)
