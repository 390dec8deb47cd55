"""POST /v1/responses, GET and DELETE /v1/responses/{response_id}: OpenAI's Responses API on the
same bridge as Chat Completions.

The request is translated by `app/dialects/responses.py` into the internal chat request and
goes through the same `ChatService.complete` as /v1/chat/completions (presets, dry run,
disconnect watch); the upstream's answer comes back translated into a `response` object or
Responses' typed events (`app/dialects/responses_stream.py`). With `store` (OpenAI's default),
the response and its conversation are kept in the response store, owned by the client key
that created them, for `previous_response_id`, GET and DELETE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.auth import client_key
from app.api.chat import CLIENT_CLOSED, PROMPT_CHARS_HEADER, STREAM_HEADERS
from app.api.deps import services_of
from app.api.dialect_route import complete_for
from app.api.json_response import JsonResponse
from app.api.relay import RelayResponse
from app.api.request_body import parse_json, read_body, validate_body
from app.dialects import RESPONSES
from app.dialects.responses import ResponsesRequest, to_chat
from app.dialects.responses_output import (
    assistant_messages,
    finish_json,
    new_response_id,
    response_object,
)
from app.dialects.responses_stream import ResponsesStream
from app.errors import InvalidRequest, NotFound, ProxyError
from app.prompt.protocol import ChatCompletionRequest
from app.services.chat import DryRun, JsonReply, StreamReply
from app.services.response_store import ResponseStore, StoredResponse, key_digest

router = APIRouter()
logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream; charset=utf-8"


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_STRING: dict[str, Any] = {"type": "string"}
_PART = _object({"type": _STRING, "text": _STRING, "image_url": _STRING, "detail": _STRING}, "type")
_ITEM = _object(
    {
        "type": _STRING,
        "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
        "content": {"anyOf": [_STRING, {"type": "array", "items": _PART}]},
        "call_id": _STRING,
        "name": _STRING,
        "arguments": _STRING,
        "output": _STRING,
    }
)
# The documented body (schemathesis generates requests from it): the fields and item shapes
# the proxy reads, each object closed. The route itself ignores fields it does not read.
_REQUEST_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _object(
                    {
                        "model": _STRING,
                        "input": {"anyOf": [_STRING, {"type": "array", "items": _ITEM}]},
                        "instructions": _STRING,
                        "stream": {"type": "boolean"},
                        "store": {"type": "boolean"},
                        "previous_response_id": _STRING,
                        "max_output_tokens": {"type": "integer", "minimum": 1},
                        "temperature": {"type": "number"},
                        "top_p": {"type": "number"},
                        "tools": {
                            "type": "array",
                            "items": _object(
                                {"type": _STRING, "name": _STRING, "description": _STRING},
                                "type",
                            ),
                        },
                        "tool_choice": {"type": "string", "enum": ["auto", "none", "required"]},
                        "parallel_tool_calls": {"type": "boolean"},
                        "user": _STRING,
                    },
                    "input",
                )
            }
        },
    }
}


@router.post("/v1/responses", response_model=None, openapi_extra=_REQUEST_SCHEMA)
async def create_response(request: Request) -> Response:
    services = services_of(request)
    service, store = services.chat, services.responses
    body = validate_body(parse_json(await read_body(request)), ResponsesRequest)
    owner = key_digest(client_key(request.scope))
    storing = body.store is not False
    if not store.enabled:
        if body.store is True or body.previous_response_id:
            param = "store" if body.store is True else "previous_response_id"
            raise InvalidRequest(
                "this proxy keeps no responses (CLIP_PROXY_RESPONSES_STORE=false): send "
                "store: false and the whole conversation as input",
                param=param,
                code="store_disabled",
            )
        storing = False
    history: list[dict[str, object]] = []
    if body.previous_response_id:
        previous = await store.get(body.previous_response_id, owner=owner)
        if previous is None:
            raise InvalidRequest(
                f"previous response {body.previous_response_id!r} not found",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = previous.messages
    turn = to_chat(body, history)
    chat = validate_body(turn.body, ChatCompletionRequest)
    outcome = await complete_for(request, service, chat, dialect=RESPONSES)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(outcome, DryRun):
        return JsonResponse(outcome.body, headers={PROMPT_CHARS_HEADER: str(outcome.prompt_chars)})
    response = response_object(body, new_response_id(), time.time(), service.default_model)
    response["store"] = storing  # false also when the operator keeps nothing
    conversation = history + turn.messages
    if isinstance(outcome, JsonReply):
        finish_json(response, outcome.body)
        if storing:
            messages = conversation + assistant_messages(response)
            await store.put(StoredResponse(response, messages, owner))
        return JsonResponse(response)
    keeper = store if storing else None
    return RelayResponse(
        _events(outcome, ResponsesStream(response), keeper, conversation, owner),
        close=outcome.close,
        ping_interval_s=service.ping_interval_s,
        media_type=EVENT_STREAM,
        headers=STREAM_HEADERS,
    )


async def _events(
    outcome: StreamReply,
    stream: ResponsesStream,
    store: ResponseStore | None,
    conversation: list[dict[str, object]],
    owner: str,
) -> AsyncIterator[bytes]:
    yield stream.start()
    async for chunk in outcome.chunks:
        events = stream.feed(chunk)
        if events:
            yield events
        if stream.ended:
            break  # failed: the upstream's error event ends the answer
    if not stream.ended:
        # Built first, stored next, sent last: a client that continues from this response
        # the moment it reads `response.completed` finds it stored.
        last = stream.finish()
        if store is not None and stream.response["status"] != "failed":
            messages = conversation + assistant_messages(stream.response)
            try:
                await store.put(StoredResponse(stream.response, messages, owner))
            except ProxyError as error:
                logger.warning("response not stored", extra={"error": error.message})
        yield last


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(request: Request, response_id: str) -> Response:
    record = await _stored(request, response_id)
    return JsonResponse(record.response)


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(request: Request, response_id: str) -> Response:
    store = services_of(request).responses
    owner = key_digest(client_key(request.scope))
    if not await store.delete(response_id, owner=owner):
        raise _not_found(response_id)
    return JsonResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def _stored(request: Request, response_id: str) -> StoredResponse:
    store = services_of(request).responses
    owner = key_digest(client_key(request.scope))
    record = await store.get(response_id, owner=owner, with_messages=False)
    if record is None:
        raise _not_found(response_id)
    return record


def _not_found(response_id: str) -> NotFound:
    # Someone else's response is "not found" too: its existence is not this client's business.
    return NotFound(
        f"no response {response_id!r} (never stored, expired, deleted, or another key's)",
        param="response_id",
        code="response_not_found",
    )
