"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import services_of
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.api.json_response import JsonResponse
from app.api.openapi import request_body_schema
from app.api.relay import RelayResponse
from app.api.request_body import read_chat_request
from app.protocol import ChatCompletionRequest
from app.service import DryRun, JsonReply

router = APIRouter()

DRY_RUN_HEADER = "x-clip-proxy-dry-run"
# Intermediaries must neither cache nor buffer an event stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# nginx's status for "the client closed the request": nobody receives it, the log shows it.
CLIENT_CLOSED = 499


@router.post(
    "/v1/chat/completions",
    response_model=None,
    # The route reads the raw request (JSON or multipart); this documents the JSON body.
    openapi_extra=request_body_schema(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    service = services_of(request).chat
    chat, uploads = await read_chat_request(request, service.limits)
    dry_run = request.headers.get(DRY_RUN_HEADER, "").lower() in ("1", "true", "yes")
    try:
        # Until the upstream answers, nothing watches the client: this does.
        outcome = await unless_disconnected(
            request.receive, service.complete(chat, uploads, dry_run=dry_run)
        )
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(outcome, DryRun):
        return JsonResponse(outcome.body)
    if isinstance(outcome, JsonReply):
        return Response(outcome.body, outcome.status_code, media_type=outcome.media_type)
    return RelayResponse(
        outcome.chunks,
        close=outcome.close,
        ping_interval_s=service.ping_interval_s,
        media_type=outcome.media_type,
        headers=STREAM_HEADERS,
    )
