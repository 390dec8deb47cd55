"""The one way a `ProxyError` becomes an HTTP answer, for routes and middleware alike."""

from __future__ import annotations

from starlette.responses import JSONResponse

from app.errors import ProxyError
from app.request_context import note_error


def error_response(error: ProxyError, *, counted: bool = True) -> JSONResponse:
    """OpenAI's error shape with the error's status and headers. `counted` errors reach
    `clip_proxy_errors_total` and the request's log line; a readiness probe's 503 is not one."""
    if counted:
        note_error(error.label)
    return JSONResponse(error.to_body(), error.status_code, headers=error.headers)
