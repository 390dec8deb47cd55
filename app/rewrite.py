"""Rewrite a chat request's messages into the embedding-prompt format DeepSeek-R1 reads.

`inline` turns a message whose content is a list of parts into one string, the parts in
order joined by "\\n": text as it is, an image of the last user message as
`<image>v1,...,v768</image>`, an image of any earlier message as
`<retain_image_emb>v1,...</retain_image_emb>` (the seed's cross-turn memory).

`content_part` keeps the list and swaps each `image_url` part for the seed's
`{"type": "image_embedding", "image_embedding": {"embedding": "...", "format": "clip_vector_v1"}}`.

Both drop `reasoning_content` from messages (DeepSeek rejects it in history); every other
field is left as the client sent it.

The inline tags are templates (`ImageTemplates`) with the placeholders {vector}, {labels},
{sha256}, {width} and {height}; the defaults above are DESIGN.md's formats. Long
conversations stay within the upstream's context with `max_retained_vectors`: only the
most recent N earlier images keep their vectors, older ones become the short
`retained_ref` (by default `<retain_image_emb ref="sha256:..."/>`; in `content_part`, a
text part holding it).

    messages = rewrite_messages(messages, images, PromptFormat.inline, ImageTemplates())
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.protocol import PromptFormat, is_image_part

Location = tuple[int, int]  # (message index, part index)
Message = dict[str, Any]

TEMPLATE_FIELDS = frozenset({"vector", "labels", "sha256", "width", "height"})


@dataclass(frozen=True)
class ImageFacts:
    """What a template may say about one image; `vector` is already formatted."""

    vector: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    labels: str = ""

    def render(self, template: str) -> str:
        return template.format(
            vector=self.vector,
            labels=self.labels,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
        )


@dataclass(frozen=True)
class ImageTemplates:
    image: str = "<image>{vector}</image>"
    retained: str = "<retain_image_emb>{vector}</retain_image_emb>"
    retained_ref: str = '<retain_image_emb ref="sha256:{sha256}"/>'
    # How many earlier images keep their vector (the most recent ones); -1 means all.
    max_retained_vectors: int = -1

    def uses(self, field: str) -> bool:
        return any(
            field in template_fields(template)
            for template in (self.image, self.retained, self.retained_ref)
        )


def template_fields(template: str) -> set[str]:
    """The placeholders of a template; ValueError for one it cannot fill."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - TEMPLATE_FIELDS
    if unknown or "" in fields:
        raise ValueError(
            f"template {template!r}: unknown placeholder(s) {sorted(unknown)}; "
            f"use {', '.join('{' + name + '}' for name in sorted(TEMPLATE_FIELDS))}"
        )
    return fields


def format_vector(vector: np.ndarray, decimals: int) -> str:
    """Comma-joined fixed-point decimals, as the seed writes them (`f"{x:.6f}"`)."""
    template = f"{{:.{decimals}f}}"
    return ",".join(template.format(value) for value in vector.tolist())


def last_user_index(messages: list[Message]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return -1


def rewrite_messages(
    messages: list[Message],
    images: Mapping[Location, ImageFacts],
    prompt_format: PromptFormat,
    templates: ImageTemplates | None = None,
) -> list[Message]:
    """New message dicts for the upstream; `images` holds the facts of each image part."""
    templates = templates or ImageTemplates()
    current = last_user_index(messages)
    as_refs = _retained_as_refs(messages, current, templates.max_retained_vectors)
    rewritten: list[Message] = []
    for message_index, message in enumerate(messages):
        out = {key: value for key, value in message.items() if key != "reasoning_content"}
        content = message.get("content")
        if isinstance(content, list):
            retained = message_index != current
            parts = []
            for part_index, part in enumerate(content):
                location = (message_index, part_index)
                if not is_image_part(part):
                    parts.append(part)
                    continue
                facts = images.get(location)
                if facts is None:
                    raise ValueError("image part without a vector")  # the service encodes all
                if location in as_refs:
                    parts.append({"type": "text", "text": facts.render(templates.retained_ref)})
                elif prompt_format is PromptFormat.inline:
                    template = templates.retained if retained else templates.image
                    parts.append({"type": "text", "text": facts.render(template)})
                else:
                    parts.append(_embedding_part(facts))
            if prompt_format is PromptFormat.inline:
                out["content"] = "\n".join(str(part["text"]) for part in parts)
            else:
                out["content"] = parts
        rewritten.append(out)
    return rewritten


def _retained_as_refs(messages: list[Message], current: int, keep: int) -> set[Location]:
    """The earlier images beyond the `keep` most recent ones."""
    if keep < 0:
        return set()
    earlier = [
        (message_index, part_index)
        for message_index, message in enumerate(messages)
        if message_index != current and isinstance(message.get("content"), list)
        for part_index, part in enumerate(message["content"])
        if is_image_part(part)
    ]
    return set(earlier[: max(len(earlier) - keep, 0)])


def _embedding_part(facts: ImageFacts) -> Mapping[str, Any]:
    embedding: dict[str, Any] = {"embedding": facts.vector, "format": "clip_vector_v1"}
    if facts.labels:
        embedding["labels"] = facts.labels
    return {"type": "image_embedding", "image_embedding": embedding}
