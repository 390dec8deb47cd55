"""Stored responses (`store: true` on /v1/responses): the response object and the conversation
that led to it, kept for `CLIP_PROXY_RESPONSES_TTL_S`, in process or in the Redis of
`CLIP_PROXY_CACHE_URL` (shared by replicas, so a second turn may land on any of them).

Each record is owned by the client key that created it: the record keeps the key's SHA-256
digest (never the key), and a read with another key finds nothing, exactly as an unknown id.

    store = ResponseStore.from_url(url, ttl_s=86400)
    await store.put(record)
    record = await store.get(response_id, owner=key_digest(token))   # None: unknown or not yours

Images and files in the stored conversation (data URLs, megabytes each) are kept once per
owner as blobs beside the records (`{prefix}blob:{sha256 of owner and URL}`), and a record
holds a reference (`clip-proxy-stored:<digest>`): every turn of a conversation stores its whole
history, which would otherwise repeat each image once per turn. Every put renews the blobs it
references, so a blob lives as long as the newest record that needs it. Only records this
store wrote are ever inflated: a reference a client writes in a request is just an unknown URL.

Unlike the image cache, a failing store is an error the client sees (503): a conversation that
silently forgot its previous turn would answer something else.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import Overloaded

KEY_PREFIX = "clip-proxy:responses:"  # under the cache's key prefix (CACHE_KEY_PREFIX)
BLOB_REF = "clip-proxy-stored:"
# Data URLs at least this long are kept as blobs (a tiny icon stays inline).
MIN_BLOB_CHARS = 1024


def key_digest(token: str | None) -> str:
    """The owner of a record: the SHA-256 of the client's bearer key ("" when none is sent)."""
    return hashlib.sha256((token or "").encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    # The chat messages of the conversation up to and including this response's answer,
    # without the instructions (a later turn brings its own).
    messages: list[dict[str, Any]]
    owner: str

    @property
    def id(self) -> str:
        return str(self.response["id"])

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"response": self.response, "messages": self.messages, "owner": self.owner}
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> StoredResponse:
        data = orjson.loads(value)
        return cls(data["response"], data["messages"], data["owner"])


class _Backend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def aclose(self) -> None: ...


class MemoryStore:
    """In process: oldest first out past `max_bytes`, each entry gone after its TTL."""

    def __init__(self, max_bytes: int) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_bytes = max_bytes
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            await self.delete(key)
            return None
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.delete(key)
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._bytes += len(value)
        while self._bytes > self._max_bytes and self._entries:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= len(old)

    async def delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    async def aclose(self) -> None:
        self._entries.clear()


class RedisStore:
    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self._client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._client.set(key, value, ex=ttl_s)

    async def delete(self, key: str) -> None:
        await self._client.delete(key)

    async def aclose(self) -> None:
        await self._client.aclose()


class ResponseStore:
    def __init__(
        self, backend: _Backend, *, ttl_s: int, enabled: bool = True, prefix: str = KEY_PREFIX
    ) -> None:
        self._backend = backend
        self.ttl_s = ttl_s
        self.enabled = enabled
        self._prefix = prefix

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl_s: int,
        enabled: bool = True,
        prefix: str = KEY_PREFIX,
        memory_bytes: int = 256 << 20,
    ) -> ResponseStore:
        backend: _Backend = RedisStore(url) if url else MemoryStore(memory_bytes)
        return cls(backend, ttl_s=ttl_s, enabled=enabled, prefix=prefix)

    async def put(self, record: StoredResponse) -> None:
        messages = copy.deepcopy(record.messages)  # the strings themselves are not copied
        blobs: dict[str, str] = {}
        for holder, key in _data_urls(messages):
            value = holder[key]
            if len(value) >= MIN_BLOB_CHARS:
                digest = hashlib.sha256(f"{record.owner}\0{value}".encode()).hexdigest()
                blobs[digest] = value
                holder[key] = BLOB_REF + digest
        for digest, value in blobs.items():
            await self._call(
                self._backend.set(self._prefix + "blob:" + digest, value.encode(), self.ttl_s)
            )
        stored = StoredResponse(record.response, messages, record.owner)
        await self._call(self._backend.set(self._prefix + record.id, stored.to_bytes(), self.ttl_s))

    async def get(
        self, response_id: str, *, owner: str, with_messages: bool = True
    ) -> StoredResponse | None:
        """The record, if `owner` made it; `with_messages` puts its images back in (a record
        whose images have expired or been evicted is gone too)."""
        record = await self._record(response_id, owner)
        if record is None or not with_messages:
            return record
        for holder, key in _data_urls(record.messages, BLOB_REF):
            blob = await self._call(
                self._backend.get(self._prefix + "blob:" + holder[key][len(BLOB_REF) :])
            )
            if blob is None:
                return None
            holder[key] = blob.decode()
        return record

    async def _record(self, response_id: str, owner: str) -> StoredResponse | None:
        value = await self._call(self._backend.get(self._prefix + response_id))
        if value is None:
            return None
        try:
            record = StoredResponse.from_bytes(value)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(record.owner, str):
            return None
        mine = hmac.compare_digest(record.owner.encode(), owner.encode())
        return record if mine else None

    async def delete(self, response_id: str, *, owner: str) -> bool:
        """Remove the record; the blobs it referenced leave with their TTL (a later turn of
        the same conversation may still hold them)."""
        if await self._record(response_id, owner) is None:
            return False
        await self._call(self._backend.delete(self._prefix + response_id))
        return True

    async def aclose(self) -> None:
        await self._backend.aclose()

    async def _call(self, operation: Any) -> Any:
        try:
            return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise Overloaded(
                "the response store is unavailable", code="response_store_unavailable"
            ) from exc


def _data_urls(
    messages: list[dict[str, Any]], prefix: str = "data:"
) -> Iterator[tuple[dict[str, Any], str]]:
    """(the dict, its key) of every image URL and file data starting with `prefix`."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            holder, key = (
                (part.get("image_url"), "url")
                if kind == "image_url"
                else (part.get("file"), "file_data")
            )
            if not isinstance(holder, dict):
                continue
            value = holder.get(key)
            if isinstance(value, str) and value.startswith(prefix):
                yield holder, key
