"""The request observer: id, duration, in-flight count, Server-Timing and one log line.

Pure ASGI, so streaming responses pass through byte for byte and disconnect detection is
untouched (a `BaseHTTPMiddleware` would buffer and hide `http.disconnect`). Per request it
costs one wrapper around `send`, which only looks at the `http.response.start` message.

- `X-Request-ID`: the client's, when it is a short plain token, else a fresh one; echoed
  on the response, bound for every log line of the request and put in error bodies.
- `Server-Timing`: the proxy's stages up to the response headers (fetch, decode,
  preprocess, encode, upstream_ttfb), which is all a streamed response can carry.
- Metrics: requests and duration by route template and status class, in-flight gauge,
  errors by code; one INFO log line per API request (probes and scrapes at DEBUG).
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import internal_error_response
from app.dialects import dialect_of_route
from app.metrics import Metrics, status_class
from app.observability.request_context import RequestRecord, bound, new_request_id

logger = logging.getLogger("clip_proxy.access")

REQUEST_ID_HEADER = "x-request-id"
# Probes and scrapes: neither in the in-flight gauge nor logged at INFO.
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord.start(
            new_request_id(_header(scope, REQUEST_ID_HEADER)), scope["headers"]
        )
        quiet = scope["path"] in QUIET_PATHS
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", record.request_id)
                headers.append("Server-Timing", record.server_timing())
                for name, value in record.response_headers.items():
                    headers.append(name, value)
            await send(message)

        if not quiet:
            self.metrics.requests_in_flight.inc()
        with bound(record):
            try:
                await self.app(scope, receive, observed_send)
            except Exception:
                # Reached only by a bug: every expected failure has an exception handler.
                logger.exception("unhandled error")
                record.error = record.error or "internal_error"
                if status:
                    raise  # mid-response: nothing left to do but drop the connection
                status = 500
                await internal_error_response(record.request_id)(scope, receive, send)
            finally:
                if not quiet:
                    self.metrics.requests_in_flight.dec()
                self._finish(scope, record, status, quiet)

    def _finish(self, scope: Scope, record: RequestRecord, status: int, quiet: bool) -> None:
        duration = record.elapsed()
        route = _route_of(scope)
        status_label = status_class(status) if status else "none"  # none: client left first
        labels = {"route": route, "status": status_label, "dialect": dialect_of_route(route)}
        self.metrics.requests.labels(**labels).inc()
        self.metrics.request_duration.labels(**labels).observe(duration)
        if record.error is not None:
            self.metrics.errors.labels(type=record.error).inc()
        fields = {
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 1),
            "stages_ms": {name: round(s * 1000, 1) for name, s in record.stages.items()},
            **record.facts,
        }
        if record.error is not None:
            fields["error"] = record.error
        logger.log(logging.DEBUG if quiet else logging.INFO, "request", extra=fields)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope["headers"]:
        if key == wanted:
            return str(value.decode("latin-1"))
    return None


def _route_of(scope: Scope) -> str:
    """The route template, never the raw path: a label must not carry what a client typed."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
