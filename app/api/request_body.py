"""Read a request from the wire and validate it against its model, one way for every route:
JSON for all of them, and for chat also a form (multipart/form-data with image uploads, or
urlencoded as `curl -d` sends it).

    embedding = await read_json_request(request, EmbeddingRequest)
    chat, uploads = await read_chat_request(request, services.chat.limits)

Multipart fields: `model`, `prompt` or `messages` (JSON), `stream`, any other request field
as a JSON value (plain text if it is not JSON), and one or more files in `image`:

    curl -F model=deepseek-r1 -F prompt='describe' -F stream=true -F image=@cat.jpg ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request

from app.errors import InvalidRequest, PayloadTooLarge, TooManyImages
from app.ingest.documents import DocumentSource, is_document_upload, looks_like_image
from app.ingest.limits import document_too_large, image_too_large
from app.ingest.sources import ImageSource, SourceKind
from app.prompt.protocol import ChatCompletionRequest, validation_code, validation_param
from app.services.chat import ChatLimits

IMAGE_FIELD = "image"
# Documents may come in `image` too (told apart by content), or in `file`.
FILE_FIELD = "file"
# Request fields that are booleans: a form sends text, and `-F stream=True` means yes.
BOOLEAN_FIELDS = frozenset({"stream", "logprobs", "parallel_tool_calls", "store", "echo"})
_FORM_TRUE = frozenset({"true", "1", "yes", "on"})
_FORM_FALSE = frozenset({"false", "0", "no", "off"})

Model = TypeVar("Model", bound=BaseModel)

# Past these a body is parsed and validated in a thread, not on the event loop.
OFF_LOOP_BYTES = 1024 * 1024
OFF_LOOP_MESSAGES = 200
# `"type"` keys a chat body may hold outside its content parts (tools' JSON schemas,
# response_format, tool calls) before the byte pre-check counts them as parts.
TYPE_KEYS_OUTSIDE_PARTS = 10_000


async def read_json_request(request: Request, model: type[Model]) -> Model:
    """A JSON body, parsed and validated; `InvalidRequest` naming the field otherwise."""
    return validate_body(parse_json(await read_body(request)), model)


async def read_chat_request(
    request: Request, limits: ChatLimits
) -> tuple[ChatCompletionRequest, list[ImageSource | DocumentSource]]:
    content_type = request.headers.get("content-type", "").lower()
    uploads: list[ImageSource | DocumentSource]
    if content_type.startswith("multipart/form-data"):
        raw, uploads = await _read_multipart(request, limits)
    elif content_type.startswith("application/x-www-form-urlencoded"):
        # curl's `-d` sends JSON under this type: a body that parses as JSON is JSON.
        body = await read_body(request)
        raw, uploads = _json_object(body), []
        if raw is None:
            raw, uploads = await _read_multipart(request, limits, body=bytes(body))
    else:
        body = await read_body(request)
        precheck_shape(body, limits)
        # A large body is parsed off the event loop: every stream in flight keeps flowing.
        if len(body) > OFF_LOOP_BYTES:
            raw, uploads = await asyncio.to_thread(parse_json, body), []
        else:
            raw, uploads = parse_json(body), []
    check_shape(raw, limits)
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if isinstance(messages, list) and len(messages) > OFF_LOOP_MESSAGES:
        chat = await asyncio.to_thread(validate_body, raw, ChatCompletionRequest)
    else:
        chat = validate_body(raw, ChatCompletionRequest)
    return chat, uploads


def precheck_shape(body: bytes | bytearray, limits: ChatLimits) -> None:
    """Refuse an absurd shape before parsing it: parsing holds the interpreter (orjson keeps
    the GIL), so a million messages would stall every stream for a third of a second. A
    byte count of the `"role"` and `"type"` keys bounds the messages and parts from above
    (only a string value that is exactly "role" or "type" counts extra), so a body under
    it is parsed and counted exactly by `check_shape`."""
    if len(body) <= OFF_LOOP_BYTES:
        return
    if body.count(b'"role"') > limits.max_messages:
        raise too_many_messages(limits.max_messages)
    if body.count(b'"type"') > limits.max_content_parts + TYPE_KEYS_OUTSIDE_PARTS:
        raise too_many_parts(limits.max_content_parts)


def too_many_messages(limit: int, count: int | None = None) -> InvalidRequest:
    counted = f"{count} messages" if count is not None else "more messages"
    return InvalidRequest(
        f"{counted} in one request than the limit of {limit} (CLIP_PROXY_MAX_MESSAGES)",
        param="messages",
        code="too_many_messages",
    )


def too_many_parts(limit: int, count: int | None = None) -> InvalidRequest:
    counted = f"{count} content parts" if count is not None else "more content parts"
    return InvalidRequest(
        f"{counted} in one request than the limit of {limit} (CLIP_PROXY_MAX_CONTENT_PARTS)",
        param="messages",
        code="too_many_content_parts",
    )


def check_shape(raw: Any, limits: ChatLimits) -> None:
    """Refuse shapes no real chat has before validating them (validation's cost grows with
    them): more than MAX_MESSAGES messages, or MAX_CONTENT_PARTS content parts in all."""
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list):
        return
    if len(messages) > limits.max_messages:
        raise too_many_messages(limits.max_messages, len(messages))
    parts = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts += len(content)
    if parts > limits.max_content_parts:
        raise too_many_parts(limits.max_content_parts, parts)


async def read_body(request: Request) -> bytearray:
    """The whole body, in one buffer that grows as the bytes arrive.

    Not `request.body()`: that keeps the bytes on the request for as long as the route runs,
    so a data URL would be held as raw body, as parsed string and as decoded image at once.
    Not a buffer sized from Content-Length either: that holds the declared bytes before any
    arrive (16 connections declaring 64 MiB and sending nothing would pin 1 GiB). Growing
    does not copy: past 1 MiB the buffer has its own mapping
    (`app/runtime/server.py: return_large_buffers_to_the_os`), which realloc extends in
    place. The caller parses this buffer and drops it.
    """
    buffer = bytearray()
    async for chunk in request.stream():
        buffer += chunk
    return buffer


# Deeper than any chat request needs, and well under orjson's limit (255) for writing the
# body upstream again: a deeper document is refused here instead of failing there.
MAX_JSON_DEPTH = 64


def parse_json(body: bytes | bytearray) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if too_deep(value, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _json_object(body: bytes | bytearray) -> Any:
    """The body as JSON when it looks like a JSON object, else None (a form). A form never
    starts with `{`: broken JSON is refused as JSON, the mistake the client made."""
    if bytes(body[:4096]).lstrip()[:1] != b"{":
        return None
    return parse_json(body)


def too_deep(value: Any, limit: int) -> bool:
    """True if `value` nests lists/objects more than `limit` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: list[Any] = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validate_body(raw: Any, model: type[Model]) -> Model:
    """The one validator of request bodies: a JSON object that `model` accepts."""
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message, param = validation_param(exc)
        raise InvalidRequest(message, param=param, code=validation_code(exc)) from exc


async def _read_multipart(
    request: Request, limits: ChatLimits, *, body: bytes | None = None
) -> tuple[dict[str, Any], list[ImageSource | DocumentSource]]:
    """A multipart form, or (`body` read already) an urlencoded one."""
    kind = "multipart" if body is None else "form"
    max_images, max_body_bytes = limits.max_images, limits.max_body_bytes
    try:
        form = await _parse_form(request, max_images + 1, max_body_bytes, body)
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyImages(
                f"more than {max_images} images uploaded", param=IMAGE_FIELD
            ) from exc
        raise InvalidRequest(f"malformed {kind} body: {exc.message}") from exc
    raw: dict[str, Any] = {}
    uploads: list[ImageSource | DocumentSource] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in (IMAGE_FIELD, FILE_FIELD):
                    raise InvalidRequest(
                        f"file field {name!r}: upload images and documents in the field "
                        "'image' (or 'file')",
                        param=name,
                    )
                uploads.append(await _read_upload(value, name, len(uploads), limits))
            elif name in ("prompt", "model"):
                raw[name] = value
            else:
                raw[name] = _form_value(name, value)
    finally:
        await form.close()
    if len(uploads) > max_images:
        raise TooManyImages(f"more than {max_images} images uploaded", param=IMAGE_FIELD)
    prompt = raw.pop("prompt", None)
    if prompt is not None:
        if "messages" in raw:
            raise InvalidRequest("send either 'prompt' or 'messages', not both", param="prompt")
        raw["messages"] = [{"role": "user", "content": prompt}]
    raw.setdefault("messages", [{"role": "user", "content": ""}] if uploads else None)
    if raw["messages"] is None:
        raise InvalidRequest(f"a {kind} request needs 'prompt' or 'messages'", param="messages")
    return raw, uploads


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, except that a field which is not valid text in its charset is
    refused by name; Starlette decodes it as Latin-1 instead, which turns a client's
    broken encoding into mojibake sent upstream."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError) as exc:
                raise InvalidRequest(
                    f"form field {part.field_name!r} is not valid {self._charset or 'utf-8'} text",
                    param=part.field_name,
                ) from exc
        super().on_part_end()


async def _parse_form(
    request: Request, max_files: int, max_part_size: int, body: bytes | None
) -> FormData:
    parser: MultiPartParser | FormParser
    if body is None:
        parser = _StrictMultiPartParser(
            request.headers,
            request.stream(),
            max_files=max_files,
            max_fields=256,
            max_part_size=max_part_size,
        )
    else:
        parser = FormParser(
            request.headers, _replay(body), max_fields=256, max_part_size=max_part_size
        )
    return await parser.parse()


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _form_value(name: str, value: str) -> Any:
    if name in BOOLEAN_FIELDS:
        return _form_boolean(name, value)
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        if name == "messages":
            raise InvalidRequest("'messages' must be a JSON array", param="messages") from None
        return value  # `-F user=alice` means the string
    if too_deep(parsed, MAX_JSON_DEPTH):
        raise InvalidRequest(f"field {name!r} is nested deeper than {MAX_JSON_DEPTH} levels")
    return parsed


def _form_boolean(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in _FORM_TRUE:
        return True
    if word in _FORM_FALSE:
        return False
    raise InvalidRequest(f"form field {name!r} must be true or false, not {value!r}", param=name)


async def _read_upload(
    upload: UploadFile, field: str, index: int, limits: ChatLimits
) -> ImageSource | DocumentSource:
    """An image or a document, told apart by its content (not its field or name)."""
    param = f"{field}[{index}]"
    most = max(limits.max_image_bytes, limits.max_document_bytes)
    if upload.size is not None and upload.size > most:
        raise PayloadTooLarge(f"the file is larger than {most} bytes", param=param)
    data = await upload.read(most + 1)
    # Told apart by content: an image's bytes are an image in either field; in `file`
    # anything else is a document (the reader says what is wrong with it); in `image` a PDF
    # is a document, and other content is sniffed as text unless the client declared it an
    # image (then the image decoder says what is wrong with it).
    declared_image = (upload.content_type or "").lower().startswith("image/")
    if (field == FILE_FIELD and not looks_like_image(data)) or is_document_upload(
        data, text=not declared_image
    ):
        if len(data) > limits.max_document_bytes:
            raise document_too_large(limits.max_document_bytes, param)
        return DocumentSource(data=data, name=upload.filename or f"upload-{index}", param=param)
    if len(data) > limits.max_image_bytes:
        raise image_too_large(limits.max_image_bytes, param)
    return ImageSource(kind=SourceKind.upload, param=param, data=data)
