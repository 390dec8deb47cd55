"""Images inside `tool` messages (a tool that read a screenshot; Anthropic's `tool_result`
blocks): written as text in every format, since a chat tool message holds text only, and as
this turn's images when the tool ran after the last assistant message."""

from __future__ import annotations

from typing import Any

import pytest

from app.prompt.protocol import PromptFormat
from app.prompt.rewrite import ImageFacts, rewrite_messages

IMAGE: Any = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "Look"}, IMAGE]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
        {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "Map"}, IMAGE]},
    ]


@pytest.mark.parametrize("prompt_format", list(PromptFormat))
def test_a_tool_messages_images_are_text_of_this_turn(prompt_format: PromptFormat) -> None:
    facts = {(0, 1): ImageFacts(vector="0.1"), (2, 1): ImageFacts(vector="0.2")}
    user, _, tool = rewrite_messages(conversation(), facts, prompt_format)
    assert tool["content"] == "Map\n<image>0.2</image>"  # this turn's image, as text
    if prompt_format is PromptFormat.inline:
        assert user["content"] == "Look\n<image>0.1</image>"  # the last user message's


def test_an_earlier_turns_tool_image_is_retained() -> None:
    messages = [
        *conversation(),
        {"role": "assistant", "content": "It is a map."},
        {"role": "user", "content": "Thanks"},
    ]
    facts = {(0, 1): ImageFacts(vector="0.1"), (2, 1): ImageFacts(vector="0.2")}
    tool = rewrite_messages(messages, facts, PromptFormat.inline)[2]
    assert tool["content"] == "Map\n<retain_image_emb>0.2</retain_image_emb>"
