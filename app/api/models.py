"""GET /v1/models: the upstream's list, relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import state_of

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    reply = await state_of(request).upstream.open("GET", "/models")
    return Response(await reply.read(), reply.status_code, media_type=reply.media_type)
