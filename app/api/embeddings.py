"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import services_of
from app.api.json_response import JsonResponse
from app.api.openapi import error_responses, request_body_schema
from app.api.request_body import read_json_request
from app.prompt.protocol import EmbeddingRequest

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=None,
    openapi_extra=request_body_schema(EmbeddingRequest),
    responses=error_responses(400, 401, 408, 413, 500, 503),
)
async def embeddings(request: Request) -> JsonResponse:
    parsed = await read_json_request(request, EmbeddingRequest)
    return JsonResponse(await services_of(request).embeddings.create(parsed))
