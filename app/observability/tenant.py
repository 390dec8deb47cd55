"""Who the request being served is: its client key's identity, or its address.

The auth layer (`app/api/auth.py`) binds both for every HTTP request; everything below it
reads them without being handed anything (asyncio tasks inherit the context):

- `current_tenant()`: a non-reversible identity of the client key that authenticated the
  request (`key_identity`), "" when the proxy has no client keys. Caches scope by it
  (`app/engine/cache_scope.py`).
- `current_client()`: whom the OCR pool shares its time between (`app/engine/fair_queue.py`):
  `key:<identity>` with keys, else `addr:<remote address>`.

    with bound_client(tenant=key_identity(token), address="10.0.0.7"):
        current_client()   # 'key:3b1f...'

Never the key itself: the identity is a SHA-256 of the key under a label of its own (so it
is not the digest the auth layer compares), cut to 128 bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_LABEL = b"clip-proxy tenant v1\x00"

_tenant: ContextVar[str] = ContextVar("clip_proxy_tenant", default="")
_client: ContextVar[str] = ContextVar("clip_proxy_client", default="")


def key_identity(key: str) -> str:
    """32 hex digits that name a client key and cannot be turned back into it."""
    return hashlib.sha256(_LABEL + key.encode("utf-8")).hexdigest()[:32]


@contextmanager
def bound_client(*, tenant: str, address: str) -> Iterator[None]:
    tenant_token = _tenant.set(tenant)
    client_token = _client.set(f"key:{tenant}" if tenant else f"addr:{address}")
    try:
        yield
    finally:
        _client.reset(client_token)
        _tenant.reset(tenant_token)


def current_tenant() -> str:
    return _tenant.get()


def current_client() -> str:
    """Empty outside a request (benchmarks, the engine's own work): one shared account."""
    return _client.get()
