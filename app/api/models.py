"""`GET /v1/models` and `GET /v1/models/{id}`: the upstream's models, through ModelsService."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import services_of
from app.api.openapi import error_responses

router = APIRouter()


@router.get("/v1/models", responses=error_responses(401, 429, 502, 503, 504))
async def list_models(request: Request) -> Response:
    reply = await services_of(request).models.list_models()
    return Response(reply.body, reply.status_code, media_type=reply.media_type)


# `:path`: hub-style ids hold a slash (`deepseek-ai/DeepSeek-R1`).
@router.get("/v1/models/{model_id:path}", responses=error_responses(401, 404, 429, 502, 503, 504))
async def retrieve_model(model_id: str, request: Request) -> Response:
    reply = await services_of(request).models.retrieve_model(model_id)
    return Response(reply.body, reply.status_code, media_type=reply.media_type)
