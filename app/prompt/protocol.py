"""Pydantic models of the OpenAI requests the proxy reads.

Every model allows extra fields: whatever the proxy does not model (tools, temperature,
stream_options, vendor fields) passes through to the upstream unchanged. Responses and
stream chunks are relayed as the upstream's bytes and need no model here.

Beside them, the proxy's own part type, which no client can send: `UploadedImagePart`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

# Sent by the proxy only toward its embedded echo upstream (app/echo/upstream.py): each
# image's pixel size, in order ("640x480,1024x768"), which the seed's prompt does not carry.
IMAGE_SIZES_HEADER = "X-Clip-Proxy-Image-Sizes"


class PromptFormat(StrEnum):
    """How image vectors travel upstream (see `app.prompt.rewrite`)."""

    inline = "inline"
    content_part = "content_part"


class PromptPreset(StrEnum):
    """What the upstream gets for each image (see `app.prompt.rewrite`)."""

    seed = "seed"  # the seed's vector formats, byte for byte
    describe = "describe"  # words R1 can read: text in the image, tags, a caption
    passthrough = "passthrough"  # the image itself, for an upstream that sees (no CLIP, no OCR)


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageUrl(OpenAIModel):
    url: str = Field(min_length=1)
    detail: str | None = None


class ImageUrlPart(OpenAIModel):
    type: Literal["image_url"]
    image_url: ImageUrl

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, value: Any) -> Any:
        # `"image_url": "data:..."`, a string instead of `{"url": ...}`: vLLM, Ollama and
        # LiteLLM accept it, and clients written against them send it.
        return {"url": value} if isinstance(value, str) else value


class FileData(OpenAIModel):
    """OpenAI's `file` part body: `file_data` (a data URL, or bare base64 with `filename`),
    or `file_id` (refused by the service: the proxy has no Files API)."""

    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class FilePart(OpenAIModel):
    type: Literal["file"]
    file: FileData


class RefusalPart(OpenAIModel):
    """An assistant's refusal in the history (`{"type": "refusal", "refusal": "..."}`)."""

    type: Literal["refusal"]
    refusal: str


class OtherPart(OpenAIModel):
    """A part the proxy does not bridge (`input_audio`, or a type it does not know): it
    passes through to the upstream untouched."""

    type: str


# The content-part union's tags (see `_part_tag`).
PART_TAGS = ("text", "image_url", "refusal", "file", "other")


def _part_tag(part: Any) -> str | None:
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    if not isinstance(kind, str):
        return None
    if kind in PART_TAGS and kind != "other":
        return kind
    return "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImageUrlPart, Tag("image_url")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[FilePart, Tag("file")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


@dataclass(frozen=True)
class UploadedImagePart:
    """An image the client uploaded (multipart field `image`), put among the parts of the last
    user message by the proxy. Internal: it is no `ContentPart` and no dict, so nothing a
    client writes (an `image_url` of `upload:0`, say) can be taken for one. It never leaves
    the proxy: the rewrite replaces it like any image part.

        content.append(UploadedImagePart(index=0))   # the first file of the `image` field
    """

    index: int  # which upload, in the order the files arrived


def is_image_part(part: object) -> bool:
    """An image among a message's parts: a client's `image_url` part or an uploaded image."""
    if isinstance(part, UploadedImagePart):
        return True
    return isinstance(part, dict) and part.get("type") == "image_url"


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[ContentPart] | None = None


class ProxyOptions(BaseModel):
    """The body field `"clip_proxy": {...}`: options for this proxy, never sent upstream."""

    model_config = ConfigDict(extra="forbid")

    preset: PromptPreset | None = None
    # Which pages of the request's PDFs to read: "1-5,9" (1-based; "12-" to the end).
    pages: str | None = Field(None, max_length=512)


class ChatCompletionRequest(OpenAIModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    # Strict: "yes" or 1 must not quietly turn a JSON request into a stream.
    stream: StrictBool | None = None
    clip_proxy: ProxyOptions | None = None

    def upstream_body(self) -> dict[str, Any]:
        """The request as JSON-ready data, with only the fields the client set (less the
        proxy's own options)."""
        return self.model_dump(exclude_unset=True, exclude={"clip_proxy"})


class EmbeddingRequest(OpenAIModel):
    # Token arrays (list[int], list[list[int]]) are OpenAI's shape too; the service
    # refuses them with a message that says why (CLIP tokenises its own text).
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def validation_param(error: ValidationError) -> tuple[str, str | None]:
    """A readable message and OpenAI-style `param` (`messages[0].content[1].image_url`) for
    the most specific problem pydantic found."""
    deepest = _deepest(error)
    param = _loc_to_param(deepest["loc"])
    message = deepest["msg"]
    if deepest["type"] == "missing" and param:
        return f"Missing required parameter: {param!r}.", param  # OpenAI's words
    if deepest["type"] == "union_tag_invalid":  # only content parts have a tagged union
        message = f"content part type {deepest.get('ctx', {}).get('tag')!r} is not supported"
    elif deepest["type"] == "union_tag_not_found":
        message = "a content part needs a string 'type'"
    return f"{message}{f' at {param}' if param else ''}", param


def validation_code(error: ValidationError) -> str | None:
    """OpenAI's error code for the problem `validation_param` describes, where it has one."""
    return "missing_required_parameter" if _deepest(error)["type"] == "missing" else None


def _deepest(error: ValidationError) -> ErrorDetails:
    # With `content: str | list[...]`, pydantic reports a failure for each branch; the one
    # that went deepest is the one that describes the user's mistake.
    return max(error.errors(include_url=False), key=lambda item: len(item["loc"]))


def _loc_to_param(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif "[" in item or item in ("str", "list"):
            pass  # union branch names are not in the user's document
        elif isinstance(previous, int) and item in PART_TAGS:
            pass  # a content part's discriminator tag; the field name, if any, follows it
        else:
            path += f".{item}" if path else item
        previous = item
    return path or None
