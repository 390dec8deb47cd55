"""POST /v1/messages and POST /v1/messages/count_tokens: Anthropic's Messages API on the same
bridge as Chat Completions.

The request is translated by `app/dialects/anthropic.py` into the internal chat request and
goes through the same `ChatService.complete` as /v1/chat/completions (presets, dry run,
disconnect watch); the upstream's answer comes back as a `message` object or Anthropic's
events (`app/dialects/anthropic_stream.py`), the relay's keep-alive as Anthropic's `ping`
event. Every error on these paths, from the auth layer's 401 to the upstream's 429, is in
Anthropic's shape (`app/api/errors.py`). Clients authenticate with `x-api-key` or
`Authorization: Bearer`; `anthropic-version` is accepted and `anthropic-beta` ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.chat import CLIENT_CLOSED, PROMPT_CHARS_HEADER, STREAM_HEADERS
from app.api.deps import services_of
from app.api.dialect_route import complete_for
from app.api.json_response import JsonResponse
from app.api.relay import RelayResponse
from app.api.request_body import parse_json, read_body, validate_body
from app.dialects import ANTHROPIC
from app.dialects.anthropic import CountTokensRequest, MessagesRequest, to_chat
from app.dialects.anthropic_output import (
    estimate_tokens,
    message_from_chat,
    message_object,
    new_message_id,
)
from app.dialects.anthropic_stream import PING, MessagesStream
from app.prompt.protocol import ChatCompletionRequest
from app.services.chat import DryRun, JsonReply, StreamReply

router = APIRouter()

EVENT_STREAM = "text/event-stream; charset=utf-8"

_STRING: dict[str, Any] = {"type": "string"}
_BLOCKS: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": _STRING,
        "max_tokens": {"type": "integer", "minimum": 1},
        "system": {"anyOf": [_STRING, _BLOCKS]},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant"]},
                    "content": {"anyOf": [_STRING, _BLOCKS]},
                },
                "required": ["role", "content"],
            },
        },
        "stream": {"type": "boolean"},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer"},
        "stop_sequences": {"type": "array", "items": _STRING},
        "tools": _BLOCKS,
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object"},
        "thinking": {"type": "object"},
    },
    "required": ["messages", "max_tokens"],
}


_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "properties": {"type": _STRING, "message": _STRING},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}
_STATUSES = {
    400: "invalid_request_error: an invalid request or image",
    401: "authentication_error: a missing or wrong key (x-api-key or Bearer)",
    404: "not_found_error",
    408: "invalid_request_error: the body did not arrive in time",
    413: "request_too_large: the body or an image over its byte limit",
    429: "rate_limit_error (Retry-After)",
    500: "api_error: the proxy or one of its models failed",
    502: "api_error: the upstream is unreachable or answered garbage",
    504: "api_error: the upstream or a model timed out",
    529: "overloaded_error: the proxy or the upstream is overloaded (Retry-After)",
}


def _responses(answer: str) -> dict[int | str, dict[str, Any]]:
    """The answers documented in Anthropic's shapes."""
    errors: dict[int | str, dict[str, Any]] = {
        status: {"description": meaning, "content": {"application/json": {"schema": _ERROR}}}
        for status, meaning in _STATUSES.items()
    }
    return {200: {"description": answer}, **errors}


def _schema(required: list[str]) -> dict[str, Any]:
    schema = {**_BODY, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post("/v1/messages", response_model=None, openapi_extra=_schema(["messages", "max_tokens"]))
async def create_message(request: Request) -> Response:
    service = services_of(request).chat
    body = validate_body(parse_json(await read_body(request)), MessagesRequest)
    chat = validate_body(to_chat(body), ChatCompletionRequest)
    outcome = await complete_for(request, service, chat, dialect=ANTHROPIC)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(outcome, DryRun):
        return JsonResponse(outcome.body, headers={PROMPT_CHARS_HEADER: str(outcome.prompt_chars)})
    model = body.model or service.default_model
    if isinstance(outcome, JsonReply):
        message = message_from_chat(outcome.body, new_message_id(), model, body.stop_sequences)
        return JsonResponse(message)
    stream = MessagesStream(message_object(new_message_id(), model), body.stop_sequences)
    return RelayResponse(
        _events(outcome, stream),
        close=outcome.close,
        ping_interval_s=service.ping_interval_s,
        media_type=EVENT_STREAM,
        headers=STREAM_HEADERS,
        ping=PING,
    )


async def _events(outcome: StreamReply, stream: MessagesStream) -> AsyncIterator[bytes]:
    yield stream.start()
    async for chunk in outcome.chunks:
        events = stream.feed(chunk)
        if events:
            yield events
        if stream.ended:
            return  # failed: the error event ends the answer
    yield stream.finish()


@router.post("/v1/messages/count_tokens", response_model=None, openapi_extra=_schema(["messages"]))
async def count_tokens(request: Request) -> Response:
    """An estimate from the rewritten prompt (the dry run's), not the upstream's tokenizer."""
    service = services_of(request).chat
    body = validate_body(parse_json(await read_body(request)), CountTokensRequest)
    chat = validate_body(to_chat(body), ChatCompletionRequest)
    outcome = await complete_for(request, service, chat, dialect=ANTHROPIC, dry_run=True)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    assert isinstance(outcome, DryRun)  # a dry run never reaches the upstream
    return JsonResponse(
        {"input_tokens": estimate_tokens(outcome.body)},
        headers={PROMPT_CHARS_HEADER: str(outcome.prompt_chars)},
    )
