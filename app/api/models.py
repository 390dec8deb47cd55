"""GET /v1/models (the upstream's list, relayed) and GET /v1/models/{id}."""

from __future__ import annotations

from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import state_of
from app.errors import NotFound, UpstreamStatus

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    reply = await state_of(request).upstream.open("GET", "/models")
    return Response(await reply.read(), reply.status_code, media_type=reply.media_type)


# `:path`: hub-style ids hold a slash (`deepseek-ai/DeepSeek-R1`).
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    upstream = state_of(request).upstream
    try:
        reply = await upstream.open("GET", f"/models/{quote(model_id, safe='/')}")
        return Response(await reply.read(), reply.status_code, media_type=reply.media_type)
    except UpstreamStatus as exc:
        if exc.status_code not in (404, 405):
            raise
    # Several OpenAI-compatible servers list their models but cannot fetch one (or do not
    # know a hub-style id in a path): find it in the list instead.
    reply = await upstream.open("GET", "/models")
    try:
        listing = orjson.loads(await reply.read())
    except orjson.JSONDecodeError:
        listing = {}
    entries = listing.get("data") if isinstance(listing, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model_id:
            return JSONResponse(entry)
    raise NotFound(f"The model '{model_id}' does not exist", param="model")
