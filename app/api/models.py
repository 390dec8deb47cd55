"""GET /v1/models: the upstream's list, relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import services_of

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    reply = await services_of(request).models.list_models()
    return Response(reply.body, reply.status_code, media_type=reply.media_type)
