"""POST /v1/embeddings."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.deps import state_of
from app.api.request_body import parse_json, read_body
from app.errors import InvalidRequest
from app.protocol import EmbeddingRequest, validation_param

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def embeddings(request: Request) -> Response:
    raw = parse_json(await read_body(request))
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        parsed = EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        message, param = validation_param(exc)
        raise InvalidRequest(message, param=param) from exc
    body = await state_of(request).embeddings.create(parsed)
    return Response(orjson.dumps(body), media_type="application/json")
