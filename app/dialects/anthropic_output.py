"""Anthropic's `message` object and error shape, built from the upstream's Chat Completions
answer and from the proxy's errors.

    message = message_from_chat(upstream_answer_bytes, model, stop_sequences)
    status, body = error_of(status_code, message)   # {"type": "error", "error": {...}}

Content blocks in order: `thinking` (from `reasoning_content`, with an empty `signature`, as
the SDK's types require one), `text`, one `tool_use` per tool call. Finish reasons become
`stop_reason`s: stop -> end_turn (stop_sequence when the upstream names the stop string it
hit, as vLLM's `stop_reason` does), length -> max_tokens, tool_calls -> tool_use,
content_filter -> refusal.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from app.errors import UpstreamBadResponse

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic's error types by status; 503 (the proxy's shed, an overloaded upstream) becomes
# Anthropic's own 529 overloaded_error, which its SDKs retry.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
OVERLOADED = 529


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def error_of(status_code: int, message: str) -> tuple[int, dict[str, Any]]:
    """Anthropic's status and error body for an error the proxy answers with."""
    if status_code == 503:
        status_code = OVERLOADED
    error_type = ERROR_TYPES.get(status_code)
    if error_type is None:
        error_type = "api_error" if status_code >= 500 else "invalid_request_error"
    return status_code, {"type": "error", "error": {"type": error_type, "message": message}}


def stop_reason_of(
    finish_reason: str | None, stop: str | None, stop_sequences: list[str] | None
) -> tuple[str, str | None]:
    """`stop_reason` and `stop_sequence` for a chat finish reason (and the stop string the
    upstream reports hitting, if it does)."""
    if finish_reason == "stop" and stop and stop_sequences and stop in stop_sequences:
        return "stop_sequence", stop
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def usage_of(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": _int(usage.get("prompt_tokens")),
        "output_tokens": _int(usage.get("completion_tokens")),
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def message_object(message_id: str, model: str) -> dict[str, Any]:
    """The message as it starts (no content): the stream's `message_start` carries it."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def thinking_block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": ""}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def tool_input(arguments: str) -> Any:
    """A tool call's JSON arguments as the `input` object ({} when empty or not JSON)."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(
    answer: bytes, message_id: str, model: str, stop_sequences: list[str] | None
) -> dict[str, Any]:
    """The `message` for the upstream's Chat Completions JSON answer."""
    try:
        parsed = orjson.loads(answer)
        choice = parsed["choices"][0]
        reply = choice.get("message") or {}
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamBadResponse("the upstream's answer is not a chat completion") from None
    message = message_object(message_id, model)
    content = message["content"]
    reasoning = reply.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append(thinking_block(reasoning))
    text = reply.get("content")
    if isinstance(text, str) and text:
        content.append(text_block(text))
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            tool_use_block(
                str(call.get("id") or f"toolu_{secrets.token_hex(12)}"),
                str(function.get("name") or ""),
                tool_input(str(function.get("arguments") or "")),
            )
        )
    stop = choice.get("stop_reason")
    reason, sequence = stop_reason_of(
        choice.get("finish_reason"), stop if isinstance(stop, str) else None, stop_sequences
    )
    message["stop_reason"], message["stop_sequence"] = reason, sequence
    message["usage"] = usage_of(parsed.get("usage"))
    return message


# About four characters of English per token: an estimate, not the upstream's tokenizer.
CHARS_PER_TOKEN = 4


def estimate_tokens(body: dict[str, Any]) -> int:
    """`/v1/messages/count_tokens`: an estimate from the rewritten chat request (images as
    the text they became under the preset), its messages' text and its tools' schemas."""
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += len(orjson.dumps(content))
        for call in message.get("tool_calls") or []:
            chars += len(orjson.dumps(call))
        chars += 4  # the role and the message's frame
    if body.get("tools"):
        chars += len(orjson.dumps(body["tools"]))
    return max(1, -(-chars // CHARS_PER_TOKEN))
