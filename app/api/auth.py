"""Client auth: `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`) on every
`/v1/*` call when keys are configured.

Pure ASGI, so streaming and disconnect detection pass through untouched. Keys are compared
as SHA-256 digests with `hmac.compare_digest`, against every configured key without an
early exit, so the time taken says nothing about how much of a key was right. Health
endpoints stay open (load balancers call them without keys); the API docs and schema
(`/docs`, `/redoc`, `/openapi.json`) need a key as `/v1/*` does; `/metrics` is protected
when `CLIP_PROXY_METRICS_REQUIRE_AUTH` is set. No key, good or bad, is ever logged.

    app.add_middleware(ClientAuthMiddleware, keys=key_digests(settings.client_keys))
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.early_answer import Lingering
from app.errors import Unauthorized
from app.observability.tenant import bound_client, key_identity

PROTECTED_PREFIX = "/v1/"
# The schema tells a stranger every route and field: it is for key holders too.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
METRICS_PATH = "/metrics"


def key_digests(keys: Iterable[str]) -> list[bytes]:
    """What the middleware compares against: the SHA-256 digest of each client key."""
    return [_digest(key) for key in keys]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def client_key(scope: Scope) -> str | None:
    """The client's key: `Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`."""
    token = bearer_token(scope)
    if token is not None:
        return token
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            key = value.decode("latin-1").strip()
            return key or None
    return None


def bearer_token(scope: Scope) -> str | None:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class ClientAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: list[bytes],
        protect_metrics: bool = False,
        lingering: Lingering | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics
        self.lingering = lingering or Lingering()

    def _protects(self, path: str) -> bool:
        return (
            path.startswith(PROTECTED_PREFIX)
            or path in DOCS_PATHS
            or (self.protect_metrics and path == METRICS_PATH)
        )

    def _accepts(self, token: str | None) -> bool:
        presented = _digest(token or "")
        matched = False
        for key in self.keys:
            # `|` rather than `or`: every key is compared, whatever matched before.
            matched |= hmac.compare_digest(presented, key)
        return matched and token is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Who is asking, for the caches' scope and the OCR pool's fair share (tenant.py):
        # the key's identity once the key is accepted, else the remote address.
        client = scope.get("client")
        address = str(client[0]) if client else ""
        if not self.keys or not self._protects(scope["path"]):
            with bound_client(tenant="", address=address):
                await self.app(scope, receive, send)
            return
        token = client_key(scope)
        if self._accepts(token):
            with bound_client(tenant=key_identity(token or ""), address=address):
                await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "missing or invalid API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
        )
        await self.lingering.answer(error, scope, receive, send)
