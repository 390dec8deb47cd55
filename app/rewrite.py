"""Rewrite a chat request's messages into the embedding-prompt format DeepSeek-R1 reads.

`inline` turns a message whose content is a list of parts into one string, the parts in
order joined by "\\n": text as it is, an image of the last user message as
`<image>v1,...,v768</image>`, an image of any earlier message as
`<retain_image_emb>v1,...</retain_image_emb>` (the seed's cross-turn memory).

`content_part` keeps the list and swaps each `image_url` part for the seed's
`{"type": "image_embedding", "image_embedding": {"embedding": "...", "format": "clip_vector_v1"}}`.

Both drop `reasoning_content` from messages (DeepSeek rejects it in history); every other
field is left as the client sent it.

    messages = rewrite_messages(messages, vectors, PromptFormat.inline)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app.protocol import PromptFormat

Location = tuple[int, int]  # (message index, part index)
Message = dict[str, Any]


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
    messages: list[Message], vectors: Mapping[Location, str], prompt_format: PromptFormat
) -> list[Message]:
    """New message dicts for the upstream; `vectors` holds each image part's formatted vector."""
    current = last_user_index(messages)
    rewritten: list[Message] = []
    for message_index, message in enumerate(messages):
        out = {key: value for key, value in message.items() if key != "reasoning_content"}
        content = message.get("content")
        if isinstance(content, list):
            retained = message_index != current
            if prompt_format is PromptFormat.inline:
                out["content"] = "\n".join(
                    _inline_part(part, vectors.get((message_index, part_index)), retained)
                    for part_index, part in enumerate(content)
                )
            else:
                out["content"] = [
                    _embedding_part(part, vectors.get((message_index, part_index)))
                    for part_index, part in enumerate(content)
                ]
        rewritten.append(out)
    return rewritten


def _inline_part(part: Mapping[str, Any], vector: str | None, retained: bool) -> str:
    if part.get("type") == "text":
        return str(part["text"])
    if vector is None:
        raise ValueError("image part without a vector")  # the service encodes every image
    tag = "retain_image_emb" if retained else "image"
    return f"<{tag}>{vector}</{tag}>"


def _embedding_part(part: Mapping[str, Any], vector: str | None) -> Mapping[str, Any]:
    if part.get("type") != "image_url":
        return part
    if vector is None:
        raise ValueError("image part without a vector")
    return {
        "type": "image_embedding",
        "image_embedding": {"embedding": vector, "format": "clip_vector_v1"},
    }
