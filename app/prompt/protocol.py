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


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[ImageUrlPart, Tag("image_url")],
    Discriminator("type"),
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
    # With `content: str | list[...]`, pydantic reports a failure for each branch; the one
    # that went deepest is the one that describes the user's mistake.
    deepest = max(error.errors(include_url=False), key=lambda item: len(item["loc"]))
    param = _loc_to_param(deepest["loc"])
    return f"{deepest['msg']}{f' at {param}' if param else ''}", param


def _loc_to_param(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif "[" in item or item in ("str", "list"):
            pass  # union branch names are not in the user's document
        elif isinstance(previous, int) and item in ("text", "image_url"):
            pass  # a content part's discriminator tag; the field name, if any, follows it
        else:
            path += f".{item}" if path else item
        previous = item
    return path or None
