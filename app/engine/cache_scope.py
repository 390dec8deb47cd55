"""Whose cache a lookup reads: the tenant's own, or one shared by every client.

A shared content cache tells one client what another sent: an image someone else sent
before comes back fast, with no `decode` stage in `Server-Timing`, and the hit counter
moves. With client keys set, `CLIP_PROXY_CACHE_SCOPE=key` (what `auto` resolves to) puts
the key's identity (`app.observability.tenant.key_identity`: a digest, never the key) in
every cache key, so each tenant computes and caches its own copy; `shared` lets tenants
that trust each other share one copy (fewer computations, and the leak above).
Without client keys there is no tenant to scope by: every mode is `shared`.

Any cache kept per image or per document uses the same object:

    scope = CacheScope.from_setting("auto", keys_set=True)
    key = f"{prefix}{namespace}:{scope.part()}{sha256}"   # 'key' mode: 't.<identity>:<sha>'
"""

from __future__ import annotations

from typing import Literal

from app.observability.tenant import current_tenant

ScopeSetting = Literal["auto", "key", "shared"]


class CacheScope:
    """`key` or `shared`, resolved once at start; `part()` is read per lookup."""

    def __init__(self, mode: Literal["key", "shared"]) -> None:
        self.mode = mode

    @classmethod
    def from_setting(cls, setting: ScopeSetting, *, keys_set: bool) -> CacheScope:
        if not keys_set or setting == "shared":
            return cls("shared")
        return cls("key")

    def tenant(self) -> str:
        """The identity the request's entries are kept under ("" when shared)."""
        return current_tenant() if self.mode == "key" else ""

    def part(self) -> str:
        """What goes between the namespace and the content hash in a cache key."""
        tenant = self.tenant()
        return f"t.{tenant}:" if tenant else ""

    def __repr__(self) -> str:
        return f"CacheScope({self.mode!r})"


SHARED = CacheScope("shared")
