"""Templates and the retained-vector cap in the prompt formats (DESIGN.md's are defaults)."""

from __future__ import annotations

from typing import Any

from app.prompt.protocol import PromptFormat
from app.prompt.rewrite import ImageFacts, ImageTemplates, rewrite_messages


def image_turn(text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "data:..."}},
        ],
    }


MESSAGES = [image_turn("one"), image_turn("two"), image_turn("three")]
FACTS = {
    (index, 1): ImageFacts(vector=f"0.{index}", sha256=f"{index}" * 64, width=4, height=3)
    for index in range(3)
}


def test_defaults_are_design_md_formats() -> None:
    out = rewrite_messages(MESSAGES, FACTS, PromptFormat.inline)
    assert [message["content"] for message in out] == [
        "one\n<retain_image_emb>0.0</retain_image_emb>",
        "two\n<retain_image_emb>0.1</retain_image_emb>",
        "three\n<image>0.2</image>",
    ]


def test_cap_turns_the_oldest_earlier_images_into_references() -> None:
    templates = ImageTemplates(max_retained_vectors=1)
    inline = rewrite_messages(MESSAGES, FACTS, PromptFormat.inline, templates)
    assert inline[0]["content"] == f'one\n<retain_image_emb ref="sha256:{"0" * 64}"/>'
    assert inline[1]["content"] == "two\n<retain_image_emb>0.1</retain_image_emb>"
    parts = rewrite_messages(MESSAGES, FACTS, PromptFormat.content_part, templates)
    assert parts[0]["content"][1] == {
        "type": "text",
        "text": f'<retain_image_emb ref="sha256:{"0" * 64}"/>',
    }
    assert parts[1]["content"][1]["type"] == "image_embedding"
    none_kept = ImageTemplates(max_retained_vectors=0)
    out = rewrite_messages(MESSAGES, FACTS, PromptFormat.inline, none_kept)
    assert [message["content"].endswith('"/>') for message in out] == [True, True, False]


def test_every_placeholder_is_filled() -> None:
    templates = ImageTemplates(
        image="[{width}x{height} {sha256} {labels}] {vector} {{literal}}",
    )
    facts = {**FACTS, (2, 1): ImageFacts("0.5", "ab" * 32, 640, 480, "dog 0.62, frisbee 0.21")}
    out = rewrite_messages(MESSAGES, facts, PromptFormat.inline, templates)
    assert out[2]["content"] == (
        f"three\n[640x480 {'ab' * 32} dog 0.62, frisbee 0.21] 0.5 {{literal}}"
    )
