"""Pydantic models of the OpenAI requests the proxy reads.

Every model allows extra fields: whatever the proxy does not model (tools, temperature,
stream_options, vendor fields) passes through to the upstream unchanged. Responses and
stream chunks are relayed as the upstream's bytes and need no model here.
"""

from __future__ import annotations

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
)


class PromptFormat(StrEnum):
    """How image vectors travel upstream (see `app.rewrite`)."""

    inline = "inline"
    content_part = "content_part"


class PromptPreset(StrEnum):
    """What the upstream gets for each image (see `app.rewrite`)."""

    seed = "seed"  # the seed's vector formats, byte for byte
    describe = "describe"  # words R1 can read: text in the image, tags, a caption


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


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")] | Annotated[ImageUrlPart, Tag("image_url")],
    Discriminator("type"),
]


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
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


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
