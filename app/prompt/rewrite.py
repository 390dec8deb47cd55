"""Rewrite a chat request's messages into the embedding-prompt format DeepSeek-R1 reads.

`inline` turns a message whose content is a list of parts into one string, the parts in
order joined by "\\n": text as it is, an image of the last user message as
`<image>v1,...,v768</image>`, an image of any earlier message as
`<retain_image_emb>v1,...</retain_image_emb>` (the seed's cross-turn memory). A `refusal`
part is joined as its text; a message with a part that is no text (`input_audio`, a type the
proxy does not know) keeps its list, that part untouched.

`content_part` keeps the list and swaps each `image_url` part for the seed's
`{"type": "image_embedding", "image_embedding": {"embedding": "...", "format": "clip_vector_v1"}}`.

Both drop `reasoning_content` from messages (DeepSeek rejects it in history); every other
field is left as the client sent it.

The inline tags are templates (`ImageTemplates`) with the placeholders {vector}, {labels},
{ocr}, {caption}, {index}, {sha256}, {width} and {height}; the defaults above are DESIGN.md's
formats. Those are the `seed` preset. The `describe` preset writes each image as words a
text-only model can read (`describe_image`): its text (OCR), tags and caption, the vector
only when asked. Text found in an image is escaped (`escape_text`: `&`, `<`, `>` as
entities), so a `</image>` in a screenshot can never close the markup around it. Long
conversations stay within the upstream's context with `max_retained_vectors`: only the
most recent N earlier images keep their vectors, older ones become the short
`retained_ref` (by default `<retain_image_emb ref="sha256:..."/>`; in `content_part`, a
text part holding it).

    messages = rewrite_messages(messages, images, PromptFormat.inline, ImageTemplates())
"""

from __future__ import annotations

import html
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.prompt.protocol import PromptFormat, PromptPreset, is_image_part

Location = tuple[int, int]  # (message index, part index)
Message = dict[str, Any]

TEMPLATE_FIELDS = frozenset(
    {"vector", "labels", "ocr", "caption", "index", "sha256", "width", "height", "description"}
)


def escape_text(text: str) -> str:
    """Words from an image, made safe inside markup: `&`, `<` and `>` as entities."""
    return html.escape(text, quote=False)


def clip_text(text: str, max_chars: int) -> str:
    """At most `max_chars` characters of `text`, saying how much was left out."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[... {len(text) - max_chars} more characters]"


@dataclass(frozen=True)
class ImageFacts:
    """What a template may say about one image; `vector` is already formatted. `ocr` is
    None when no OCR ran, "" when it found no text."""

    vector: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    labels: str = ""
    tags: str = ""
    ocr: str | None = None
    caption: str = ""
    index: int = 0  # 1-based, over the request's images in order
    description: str = ""  # a describer's (app/vision), when one answered
    image_url: str = ""  # passthrough: the image itself, as a data URL, for an upstream that sees
    route: str = ""  # which way the image went (bridge, described:<name>, fallback, passthrough)

    def render(self, template: str) -> str:
        return template.format(
            vector=self.vector,
            labels=self.labels,
            ocr=escape_text(self.ocr or ""),
            caption=escape_text(self.caption),
            description=escape_text(self.description),
            index=self.index,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
        )


def describe_image(facts: ImageFacts, *, include_vector: bool = False) -> str:
    """The `describe` preset's block for one image: what R1 can read about it."""
    lines = [f'<image index="{facts.index}" width="{facts.width}" height="{facts.height}">']
    if facts.caption:
        lines.append(f"Caption: {escape_text(facts.caption)}")
    if facts.description:
        lines.append(f"Description: {escape_text(facts.description)}")
    if facts.ocr:
        lines += ["Text in the image:", escape_text(facts.ocr)]
    elif facts.ocr is not None:
        lines.append("Text in the image: none")
    if facts.tags:
        lines.append(f"Looks like: {escape_text(facts.tags)}")
    if include_vector:
        lines.append(f"CLIP vector: {facts.vector}")
    lines.append("</image>")
    return "\n".join(lines)


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


def append_to_last_user(messages: list[Message], parts: list[Any]) -> None:
    """Put `parts` at the end of the last user message, after its text (a new user message
    when there is none): where a multipart request's uploads belong."""
    if not parts:
        return
    index = last_user_index(messages)
    if index < 0:
        messages.append({"role": "user", "content": parts})
        return
    content = messages[index].get("content")
    if isinstance(content, list):
        before = content
    elif content:
        before = [{"type": "text", "text": content}]
    else:
        before = []
    messages[index]["content"] = before + parts


def rewrite_messages(
    messages: list[Message],
    images: Mapping[Location, ImageFacts],
    prompt_format: PromptFormat,
    templates: ImageTemplates | None = None,
    *,
    preset: PromptPreset = PromptPreset.seed,
    include_vector: bool = False,
) -> list[Message]:
    """New message dicts for the upstream; `images` holds the facts of each image part."""
    templates = templates or ImageTemplates()
    describe = preset is PromptPreset.describe
    current = last_user_index(messages)
    turn = _current_tool_results(messages)
    as_refs = _retained_as_refs(messages, current, templates.max_retained_vectors, turn)
    rewritten: list[Message] = []
    for message_index, message in enumerate(messages):
        out = {key: value for key, value in message.items() if key != "reasoning_content"}
        content = message.get("content")
        if isinstance(content, list):
            retained = message_index != current and message_index not in turn
            parts = []
            for part_index, part in enumerate(content):
                location = (message_index, part_index)
                if not is_image_part(part):
                    parts.append(part)
                    continue
                facts = images.get(location)
                if facts is None:
                    raise ValueError("image part without a vector")  # the service encodes all
                if facts.image_url:
                    parts.append({"type": "image_url", "image_url": {"url": facts.image_url}})
                elif describe:
                    text = describe_image(facts, include_vector=include_vector)
                    parts.append({"type": "text", "text": text})
                elif location in as_refs:
                    parts.append({"type": "text", "text": facts.render(templates.retained_ref)})
                elif prompt_format is PromptFormat.inline or message.get("role") == "tool":
                    template = templates.retained if retained else templates.image
                    parts.append({"type": "text", "text": facts.render(template)})
                else:
                    parts.append(_embedding_part(facts))
            # A tool message holds text only upstream: its images are written inline.
            inline = prompt_format is PromptFormat.inline or message.get("role") == "tool"
            if inline and all(map(_is_textual, parts)):
                out["content"] = "\n".join(_part_text(part) for part in parts)
            else:
                # `content_part`, or a part inline cannot write as text (`input_audio`, a
                # type the proxy does not know): the list stays, that part untouched.
                out["content"] = parts
        rewritten.append(out)
    return rewritten


def _is_textual(part: Mapping[str, Any]) -> bool:
    return part.get("type") in ("text", "refusal")


def _part_text(part: Mapping[str, Any]) -> str:
    return str(part["refusal"] if part.get("type") == "refusal" else part["text"])


def _current_tool_results(messages: list[Message]) -> set[int]:
    """The tool messages after the last assistant message: results of this turn's calls
    (a tool that read a screenshot), whose images are current, not earlier ones."""
    turn: set[int] = set()
    for index in range(len(messages) - 1, -1, -1):
        role = messages[index].get("role")
        if role == "assistant":
            break
        if role == "tool":
            turn.add(index)
    return turn


def _retained_as_refs(
    messages: list[Message], current: int, keep: int, turn: set[int] | None = None
) -> set[Location]:
    """The earlier images beyond the `keep` most recent ones."""
    if keep < 0:
        return set()
    turn = turn or set()
    earlier = [
        (message_index, part_index)
        for message_index, message in enumerate(messages)
        if message_index != current
        and message_index not in turn
        and isinstance(message.get("content"), list)
        for part_index, part in enumerate(message["content"])
        if is_image_part(part)
    ]
    return set(earlier[: max(len(earlier) - keep, 0)])


def _embedding_part(facts: ImageFacts) -> Mapping[str, Any]:
    embedding: dict[str, Any] = {"embedding": facts.vector, "format": "clip_vector_v1"}
    if facts.labels:
        embedding["labels"] = facts.labels
    return {"type": "image_embedding", "image_embedding": embedding}
