"""OpenAI Responses (`POST /v1/responses`) -> the internal Chat Completions request.

    request = ResponsesRequest.model_validate(raw)
    turn = to_chat(request, history=[])          # turn.body: a Chat Completions request

The answer (the `response` object) is built by `app/dialects/responses_output.py`, the
streamed one by `app/dialects/responses_stream.py`.

Input items become chat messages: `message` items (roles user, assistant, system, developer;
`input_text`, `output_text`, `input_image`, `input_file` parts), `function_call` items become an
assistant message's `tool_calls`, `function_call_output` items `tool` messages; `reasoning`
items a client sends back are dropped (DeepSeek asks for reasoning not to be sent back).
Images become `image_url` parts and files `file` parts, so the bridge treats them as on the
chat route. What Chat Completions has no equivalent for (built-in tools, file ids) is a 400
naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.errors import InvalidRequest

Message = dict[str, Any]

# The most input items one request may carry (a long agent run has hundreds).
MAX_INPUT_ITEMS = 4096
ROLES = frozenset({"user", "assistant", "system", "developer"})


class ResponsesRequest(BaseModel):
    """The fields the proxy reads; anything else a client sends (include, truncation,
    prompt_cache_key, service_tier, ...) has no Chat Completions equivalent and is ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    clip_proxy: dict[str, Any] | None = None


@dataclass
class ChatTurn:
    """One request in the internal form: the chat body to send, and the messages this turn
    adds to the conversation (the stored history's continuation, instructions left out)."""

    body: dict[str, Any]
    messages: list[Message] = field(default_factory=list)


# ---- request -----------------------------------------------------------------------------


def to_chat(request: ResponsesRequest, history: list[Message]) -> ChatTurn:
    """The chat body for this request, continuing `history` (a stored conversation)."""
    items = (
        [{"type": "message", "role": "user", "content": request.input}]
        if isinstance(request.input, str)
        else request.input
    )
    if len(items) > MAX_INPUT_ITEMS:
        raise InvalidRequest(
            f"{len(items)} input items; the limit is {MAX_INPUT_ITEMS}", param="input"
        )
    turn_messages = input_messages(items)
    messages: list[Message] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages += history + turn_messages
    if not messages:
        raise InvalidRequest("input is empty", param="input")
    body: dict[str, Any] = {"messages": messages}
    if request.model:
        body["model"] = request.model
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    simple = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "metadata": request.metadata,
        "user": request.user,
    }
    body.update({name: value for name, value in simple.items() if value is not None})
    if request.tools:
        body["tools"] = [chat_tool(tool, index) for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = chat_tool_choice(request.tool_choice)
    if request.text and (response_format := chat_response_format(request.text)) is not None:
        body["response_format"] = response_format
    if request.reasoning and request.reasoning.get("effort"):
        body["reasoning_effort"] = request.reasoning["effort"]
    if request.clip_proxy is not None:
        body["clip_proxy"] = request.clip_proxy
    return ChatTurn(body, turn_messages)


def input_messages(items: list[dict[str, Any]]) -> list[Message]:
    messages: list[Message] = []
    for index, item in enumerate(items):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("an input item must be an object", param=param)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _string(item, "name", param),
                    "arguments": _arguments(item.get("arguments")),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(part.get("text", "") for part in output if isinstance(part, dict))
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(item, "call_id", param),
                    "content": output if isinstance(output, str) else orjson.dumps(output).decode(),
                }
            )
        elif kind == "reasoning":
            continue  # DeepSeek asks for reasoning not to be sent back
        else:
            raise InvalidRequest(
                f"input item type {kind!r} is not supported by this proxy",
                param=f"{param}.type",
                code="unsupported_input_item",
            )
    return messages


def _message(item: dict[str, Any], param: str) -> Message:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(
            f"role {role!r} is not one of {', '.join(sorted(ROLES))}", param=f"{param}.role"
        )
    # DeepSeek knows no developer role: it is OpenAI's newer name for system.
    chat_role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list", param=f"{param}.content")
    parts = [_part(part, f"{param}.content[{index}]") for index, part in enumerate(content)]
    if chat_role != "user" and all(part["type"] == "text" for part in parts):
        # Assistant and system messages take plain text upstream.
        return {"role": chat_role, "content": "".join(part["text"] for part in parts)}
    return {"role": chat_role, "content": parts}


def _part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _string(part, "text", param)}
    if kind == "refusal":
        return {"type": "text", "text": _string(part, "refusal", param)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                "input_image needs image_url (a data URL or an http(s) URL); file_id is not "
                "supported by this proxy",
                param=f"{param}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise InvalidRequest(
                "input_file needs file_data (a data URL); file_id and file_url are not "
                "supported by this proxy",
                param=f"{param}.file_data",
            )
        document = {"file_data": data}
        if part.get("filename"):
            document["filename"] = part["filename"]
        return {"type": "file", "file": document}
    raise InvalidRequest(f"content part type {kind!r} is not supported", param=f"{param}.type")


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value or "{}"
    return orjson.dumps(value or {}).decode()


def _string(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=f"{param}.{name}")
    return value


def chat_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    kind = tool.get("type")
    if kind != "function":
        raise InvalidRequest(
            f"tool type {kind!r} is a built-in tool the upstream cannot run; only function "
            "tools are supported",
            param=f"tools[{index}].type",
            code="unsupported_tool",
        )
    function = {"name": _string(tool, "name", f"tools[{index}]")}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"tool_choice type {choice.get('type')!r} is not supported; use auto, none, required "
        "or a function",
        param="tool_choice",
        code="unsupported_tool",
    )


def chat_response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    format_ = text.get("format")
    if not isinstance(format_, dict) or format_.get("type") in (None, "text"):
        return None
    if format_["type"] == "json_object":
        return {"type": "json_object"}
    if format_["type"] == "json_schema":
        schema = {
            k: format_[k] for k in ("name", "schema", "strict", "description") if k in format_
        }
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        f"text.format type {format_['type']!r} is not supported", param="text.format.type"
    )
