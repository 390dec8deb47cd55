"""The prompt formats, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from app.protocol import PromptFormat, UploadedImagePart
from app.rewrite import ImageFacts, format_vector, rewrite_messages


def test_format_vector_writes_fixed_decimals() -> None:
    vector = np.array([0.1234567, -0.5, 1e-9, -1e-9], dtype=np.float32)
    assert format_vector(vector, 6) == "0.123457,-0.500000,0.000000,-0.000000"
    assert format_vector(vector, 3) == "0.123,-0.500,0.000,-0.000"


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "sys"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "first"},
            {"type": "image_url", "image_url": {"url": "data:..."}},
        ],
    },
    {"role": "assistant", "content": "a cat", "reasoning_content": "hmm", "name": "bot"},
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "data:..."}},
            {"type": "text", "text": "second"},
            {"type": "text", "text": "more"},
        ],
    },
]
VECTORS = {
    (1, 1): ImageFacts(vector="0.100000,0.200000"),
    (3, 0): ImageFacts(vector="-0.300000,0.400000"),
}


def test_inline_format_byte_for_byte() -> None:
    out = rewrite_messages(MESSAGES, VECTORS, PromptFormat.inline)
    assert json.dumps(out) == json.dumps(
        [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": "first\n<retain_image_emb>0.100000,0.200000</retain_image_emb>",
            },
            {"role": "assistant", "content": "a cat", "name": "bot"},
            {"role": "user", "content": "<image>-0.300000,0.400000</image>\nsecond\nmore"},
        ]
    )


def test_content_part_format_byte_for_byte() -> None:
    out = rewrite_messages(MESSAGES, VECTORS, PromptFormat.content_part)
    embedding = {"type": "image_embedding", "image_embedding": {"format": "clip_vector_v1"}}
    assert out[1]["content"] == [
        {"type": "text", "text": "first"},
        {
            "type": "image_embedding",
            "image_embedding": {"embedding": "0.100000,0.200000", "format": "clip_vector_v1"},
        },
    ]
    assert out[3]["content"][0] == {
        **embedding,
        "image_embedding": {"embedding": "-0.300000,0.400000", "format": "clip_vector_v1"},
    }
    assert out[3]["content"][1:] == MESSAGES[3]["content"][1:]
    assert out[2] == {"role": "assistant", "content": "a cat", "name": "bot"}


def test_rewrite_leaves_the_input_untouched() -> None:
    before = json.dumps(MESSAGES)
    rewrite_messages(MESSAGES, VECTORS, PromptFormat.inline)
    assert json.dumps(MESSAGES) == before


def test_text_only_list_content_becomes_one_string() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert rewrite_messages(messages, {}, PromptFormat.inline) == [
        {"role": "user", "content": "a\nb"}
    ]


def test_an_uploaded_image_part_is_rewritten_as_any_image() -> None:
    """The proxy's own part for an upload leaves exactly as a client's `image_url` would."""
    uploaded: list[dict[str, Any]] = [
        {**message, "content": [UploadedImagePart(0), *message["content"][1:]]}
        if index == 3
        else message
        for index, message in enumerate(MESSAGES)
    ]
    for prompt_format in PromptFormat:
        expected = rewrite_messages(MESSAGES, VECTORS, prompt_format)
        assert rewrite_messages(uploaded, VECTORS, prompt_format) == expected
