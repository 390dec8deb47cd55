"""Anthropic Messages (`POST /v1/messages`) -> the internal Chat Completions request.

    request = MessagesRequest.model_validate(raw)
    body = to_chat(request)                     # a Chat Completions request body

The answer (the `message` object) is built by `app/dialects/anthropic_output.py`, the streamed
one by `app/dialects/anthropic_stream.py`; errors in Anthropic's shape there too.

`system` (a string or text blocks) becomes a system message. Content blocks: `text` as text,
`image` (a base64 or url source) as an `image_url` part, `document` (base64 PDF, plain text,
url) as a `file` part, `tool_use` as the assistant message's `tool_calls`, `tool_result` as a
`tool` message ahead of the user's other blocks (its images as `image_url` parts: the bridge
turns them into text, since a chat tool message holds text only), `thinking` and
`redacted_thinking` dropped (DeepSeek asks for reasoning not to be sent back).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.errors import InvalidRequest

Message = dict[str, Any]

# The most messages one request may carry (a long agent run has hundreds).
MAX_MESSAGES = 4096
_DROPPED = frozenset({"thinking", "redacted_thinking"})


class MessagesRequest(BaseModel):
    """The fields the proxy reads; anything else (`container`, `mcp_servers`, `service_tier`,
    `cache_control` on blocks) has no Chat Completions equivalent and is ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    stream: StrictBool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None  # accepted: R1 reasons anyway
    clip_proxy: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    """`/v1/messages/count_tokens`: the same body without `max_tokens`."""

    max_tokens: int = Field(default=1, ge=1)


def to_chat(request: MessagesRequest) -> dict[str, Any]:
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidRequest(
            f"{len(request.messages)} messages; the limit is {MAX_MESSAGES}", param="messages"
        )
    messages: list[Message] = []
    system = _system(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        messages += _messages(message, f"messages[{index}]")
    if not messages:
        raise InvalidRequest("messages: at least one message is required", param="messages")
    body: dict[str, Any] = {"messages": messages, "max_tokens": request.max_tokens}
    if request.model:
        body["model"] = request.model
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    simple = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stop": request.stop_sequences or None,
    }
    body.update({name: value for name, value in simple.items() if value is not None})
    user = (request.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user
    if request.tools:
        body["tools"] = [_tool(tool, index) for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        _tool_choice(request.tool_choice, body)
    if request.clip_proxy is not None:
        body["clip_proxy"] = request.clip_proxy
    return body


def _system(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest("system blocks must be text blocks", param=f"system[{index}]")
        texts.append(_string(block, "text", f"system[{index}]"))
    return "\n".join(texts)


def _messages(message: Any, param: str) -> list[Message]:
    """One Anthropic message as chat messages: tool results first (as `tool` messages),
    then the message itself if anything is left of it."""
    if not isinstance(message, dict):
        raise InvalidRequest("a message must be an object", param=param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"role {role!r} is not one of assistant, user", param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list", param=f"{param}.content")
    out: list[Message] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        where = f"{param}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in _DROPPED:
            continue
        if kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, where))
        elif kind == "tool_result" and role == "user":
            out.append(_tool_message(block, where))
        else:
            parts.append(_part(block, where))
    if role == "assistant":
        if parts and any(part["type"] != "text" for part in parts):
            raise InvalidRequest(
                "assistant messages take text, tool_use and thinking blocks", param=param
            )
        text = "\n".join(part["text"] for part in parts)
        if text or calls:
            assistant: Message = {"role": "assistant", "content": text or None}
            if calls:
                assistant["tool_calls"] = calls
            out.append(assistant)
        return out
    if parts:
        if all(part["type"] == "text" for part in parts):
            out.append({"role": "user", "content": "\n".join(part["text"] for part in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _part(block: Any, param: str) -> dict[str, Any]:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"type": "text", "text": _string(block, "text", param)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, param)}}
    if kind == "document":
        return _document(block, param)
    raise InvalidRequest(
        f"content block type {kind!r} is not supported here", param=f"{param}.type"
    )


def _image_url(block: dict[str, Any], param: str) -> str:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media_type = _string(source, "media_type", f"{param}.source")
        data = _string(source, "data", f"{param}.source")
        return f"data:{media_type};base64,{data}"
    if kind == "url" and isinstance(source, dict):
        return _string(source, "url", f"{param}.source")
    raise InvalidRequest(
        f"image source type {kind!r} is not supported; use base64 or url",
        param=f"{param}.source.type",
    )


def _document(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    where = f"{param}.source"
    if kind == "base64" and isinstance(source, dict):
        media_type = source.get("media_type") or "application/pdf"
        data = f"data:{media_type};base64,{_string(source, 'data', where)}"
    elif kind == "text" and isinstance(source, dict):
        text = _string(source, "data", where).encode("utf-8")
        media_type = source.get("media_type") or "text/plain"
        data = f"data:{media_type};base64,{base64.b64encode(text).decode('ascii')}"
    elif kind == "url" and isinstance(source, dict):
        data = _string(source, "url", where)
    else:
        raise InvalidRequest(
            f"document source type {kind!r} is not supported; use base64, text or url",
            param=f"{where}.type",
        )
    title = block.get("title")
    filename = title if isinstance(title, str) and title else "document"
    return {"type": "file", "file": {"filename": filename, "file_data": data}}


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    arguments = block.get("input")
    return {
        "id": _string(block, "id", param),
        "type": "function",
        "function": {
            "name": _string(block, "name", param),
            "arguments": orjson.dumps(arguments if arguments is not None else {}).decode(),
        },
    }


def _tool_message(block: dict[str, Any], param: str) -> Message:
    content = block.get("content")
    tool_call_id = _string(block, "tool_use_id", param)
    if content is None or isinstance(content, str):
        text = content or ""
        return {"role": "tool", "tool_call_id": tool_call_id, "content": text}
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list", param=f"{param}.content")
    parts = [_part(part, f"{param}.content[{index}]") for index, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        text = "\n".join(part["text"] for part in parts)
        return {"role": "tool", "tool_call_id": tool_call_id, "content": text}
    # Images stay parts here; the bridge rewrites them into the text of this tool message.
    return {"role": "tool", "tool_call_id": tool_call_id, "content": parts}


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    param = f"tools[{index}]"
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequest(
            f"tool type {kind!r} is a server tool the upstream cannot run; only client tools "
            "(name, description, input_schema) are supported",
            param=f"{param}.type",
        )
    function: dict[str, Any] = {"name": _string(tool, "name", param)}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    schema = tool.get("input_schema")
    function["parameters"] = schema if isinstance(schema, dict) else {"type": "object"}
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any], body: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool":
        name = _string(choice, "name", "tool_choice")
        body["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest(
            f"tool_choice type {kind!r} is not one of auto, any, tool, none",
            param="tool_choice.type",
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        body["parallel_tool_calls"] = False


def _string(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=f"{param}.{name}")
    return value
