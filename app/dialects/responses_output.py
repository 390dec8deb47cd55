"""The `response` object of OpenAI's Responses API, built from the upstream's Chat Completions
answer: its output items (`reasoning` from `reasoning_content` as `reasoning_text`, `message`
with `output_text`, `function_call` per tool call), `usage` in Responses' words, and `status`
(`completed`, or `incomplete` with the reason when the upstream stopped at its token limit).

    response = response_object(request, new_response_id(), time.time(), default_model)
    finish_json(response, upstream_answer_bytes)   # a JSON answer; streams: responses_stream.py
    history = assistant_messages(response)         # the answer as chat history for a next turn
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from app.dialects.responses import Message, ResponsesRequest
from app.errors import UpstreamBadResponse

# Chat Completions finish reasons that leave a response incomplete, and why (Responses' words).
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def new_response_id() -> str:
    return new_id("resp")


def response_object(
    request: ResponsesRequest, response_id: str, created_at: float, model: str
) -> dict[str, Any]:
    """The response as it starts (`in_progress`, no output): the stream's first events carry
    it, and the answer fills it in."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model or model,
        "output": [],
        "parallel_tool_calls": (
            True if request.parallel_tool_calls is None else request.parallel_tool_calls
        ),
        "previous_response_id": request.previous_response_id,
        "reasoning": request.reasoning,
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or new_id("rs"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def message_item(
    text: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    call_id: str, name: str, arguments: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def usage_of(usage: Any) -> dict[str, Any] | None:
    """Chat Completions usage in Responses' words."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = _int(prompt_details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _int(completion_details.get("reasoning_tokens"))
        },
        "total_tokens": _int(usage.get("total_tokens")) or prompt + completion,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def finish(response: dict[str, Any], finish_reason: str | None) -> None:
    """Set the status from the upstream's finish reason."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    if reason is None:
        response["status"] = "completed"
    else:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": reason}


def finish_json(response: dict[str, Any], answer: bytes) -> None:
    """Fill `response` from the upstream's Chat Completions JSON answer."""
    try:
        parsed = orjson.loads(answer)
        choice = parsed["choices"][0]
        message = choice.get("message") or {}
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamBadResponse("the upstream's answer is not a chat completion") from None
    output = response["output"]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(reasoning))
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(content))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            function_call_item(
                str(call.get("id") or new_id("call")),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    response["usage"] = usage_of(parsed.get("usage"))
    finish(response, choice.get("finish_reason"))


def assistant_messages(response: dict[str, Any]) -> list[Message]:
    """The response's output as chat history for the next turn (reasoning left out)."""
    text = "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in response["output"]
        if item["type"] == "function_call"
    ]
    if not text and not calls:
        return []
    message: Message = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]
