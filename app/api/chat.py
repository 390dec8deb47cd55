"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api.deps import state_of
from app.api.request_body import read_chat_request
from app.service import DryRun, JsonReply

router = APIRouter()

DRY_RUN_HEADER = "x-clip-proxy-dry-run"
# Intermediaries must neither cache nor buffer an event stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    limits = state.settings
    chat, uploads = await read_chat_request(
        request,
        max_images=limits.max_images_per_request,
        max_image_bytes=limits.max_image_bytes,
        max_body_bytes=limits.max_body_bytes,
    )
    dry_run = request.headers.get(DRY_RUN_HEADER, "").lower() in ("1", "true", "yes")
    outcome = await state.chat.complete(chat, uploads, dry_run=dry_run)
    if isinstance(outcome, DryRun):
        return JSONResponse(outcome.body)
    if isinstance(outcome, JsonReply):
        return Response(outcome.body, outcome.status_code, media_type=outcome.media_type)
    return StreamingResponse(outcome.chunks, media_type=outcome.media_type, headers=STREAM_HEADERS)
