"""POST /v1/chat/completions."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import services_of
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.api.json_response import JsonResponse
from app.api.openapi import error_responses, request_body_schema
from app.api.relay import RelayResponse
from app.api.request_body import read_chat_request
from app.errors import InvalidRequest
from app.prompt.protocol import ChatCompletionRequest, PromptFormat, PromptPreset
from app.services.chat import DryRun, JsonReply

router = APIRouter()

Choice = TypeVar("Choice", bound=StrEnum)

DRY_RUN_HEADER = "x-clip-proxy-dry-run"
PRESET_HEADER = "x-clip-proxy-preset"
FORMAT_HEADER = "x-clip-proxy-format"
PROMPT_CHARS_HEADER = "X-Clip-Proxy-Prompt-Chars"
# The dry run: which way each image went, `1=described:local,2=fallback,3=passthrough`.
IMAGE_ROUTES_HEADER = "X-Clip-Proxy-Image-Routes"
# Intermediaries must neither cache nor buffer an event stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# nginx's status for "the client closed the request": nobody receives it, the log shows it.
CLIENT_CLOSED = 499


@router.post(
    "/v1/chat/completions",
    response_model=None,
    # The route reads the raw request (JSON or multipart); this documents both.
    openapi_extra=request_body_schema(ChatCompletionRequest, form=True),
    responses={
        200: {
            "description": "The completion: JSON, or an event stream when `stream` is true",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        **error_responses(400, 401, 404, 408, 413, 429, 500, 502, 503, 504),
    },
)
async def chat_completions(request: Request) -> Response:
    service = services_of(request).chat
    chat, uploads = await read_chat_request(request, service.limits)
    dry_run = request.headers.get(DRY_RUN_HEADER, "").lower() in ("1", "true", "yes")
    preset = choice_of(
        PromptPreset, "X-Clip-Proxy-Preset", request.headers.get(PRESET_HEADER), "invalid_preset"
    )
    # The playground's format choice; a client library sets it per request the same way.
    prompt_format = choice_of(
        PromptFormat, "X-Clip-Proxy-Format", request.headers.get(FORMAT_HEADER), "invalid_format"
    )
    try:
        # Until the upstream answers, nothing watches the client: this does.
        outcome = await unless_disconnected(
            request.receive,
            service.complete(
                chat, uploads, dry_run=dry_run, preset=preset, prompt_format=prompt_format
            ),
        )
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(outcome, DryRun):
        headers = {PROMPT_CHARS_HEADER: str(outcome.prompt_chars)}
        if outcome.image_routes:
            headers[IMAGE_ROUTES_HEADER] = ",".join(
                f"{number}={route}" for number, route in enumerate(outcome.image_routes, 1)
            )
        return JsonResponse(outcome.body, headers=headers)
    if isinstance(outcome, JsonReply):
        return Response(outcome.body, outcome.status_code, media_type=outcome.media_type)
    return RelayResponse(
        outcome.chunks,
        close=outcome.close,
        ping_interval_s=service.ping_interval_s,
        media_type=outcome.media_type,
        headers=STREAM_HEADERS,
    )


def choice_of(kind: type[Choice], header: str, value: str | None, code: str) -> Choice | None:
    """The value of a choice header (`X-Clip-Proxy-Preset`, `X-Clip-Proxy-Format`), if any;
    a value that is not one of the choices is a 400 naming the header."""
    if value is None or not value.strip():
        return None
    try:
        return kind(value.strip().lower())
    except ValueError:
        choices = ", ".join(choice.value for choice in kind)
        raise InvalidRequest(
            f"{header}: {value!r} is not one of {choices}", param=header, code=code
        ) from None
