"""`GET /v1/models`: the upstream's list of models, relayed as it answered.

    reply = await ModelsService(upstream).list_models()   # a JsonReply: status, body, type
"""

from __future__ import annotations

from app.service import JsonReply
from app.upstream import UpstreamClient


class ModelsService:
    """What the upstream serves: the proxy adds no models of its own and hides none."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream

    async def list_models(self) -> JsonReply:
        reply = await self._upstream.open("GET", "/models")
        return JsonReply(reply.status_code, await reply.read(), reply.media_type)
