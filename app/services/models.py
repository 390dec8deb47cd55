"""`GET /v1/models` and `GET /v1/models/{id}`: the upstream's models, relayed as it answered.

reply = await ModelsService(upstream).list_models()   # a JsonReply: status, body, type
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from app.errors import NotFound, UpstreamStatus
from app.services.chat import JsonReply
from app.upstream.client import UpstreamClient


class ModelsService:
    """What the upstream serves: the proxy adds no models of its own and hides none."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream

    async def list_models(self) -> JsonReply:
        reply = await self._upstream.open("GET", "/models")
        return JsonReply(reply.status_code, await reply.read(), reply.media_type)

    async def retrieve_model(self, model_id: str) -> JsonReply:
        try:
            reply = await self._upstream.open("GET", f"/models/{quote(model_id, safe='/')}")
            return JsonReply(reply.status_code, await reply.read(), reply.media_type)
        except UpstreamStatus as exc:
            if exc.status_code not in (404, 405):
                raise
        # Several OpenAI-compatible servers list their models but cannot fetch one (or do not
        # know a hub-style id in a path): find it in the list instead.
        reply = await self._upstream.open("GET", "/models")
        try:
            listing = orjson.loads(await reply.read())
        except orjson.JSONDecodeError:
            listing = {}
        entries = listing.get("data") if isinstance(listing, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("id") == model_id:
                return JsonReply(200, orjson.dumps(entry), "application/json")
        raise NotFound(f"The model '{model_id}' does not exist", param="model")
