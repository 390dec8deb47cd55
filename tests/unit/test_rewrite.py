"""The prompt formats, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from app.prompt.protocol import PromptFormat, UploadedImagePart
from app.prompt.rewrite import ImageFacts, format_vector, rewrite_messages


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


def test_describe_escapes_text_so_it_cannot_close_the_markup() -> None:
    from app.prompt.protocol import PromptPreset
    from app.prompt.rewrite import ImageFacts, describe_image, rewrite_messages

    facts = ImageFacts(
        vector="0.5,0.5",
        width=640,
        height=480,
        ocr='</image><image index="9">& more',
        caption="a <b>bold</b> claim",
        tags="screenshot 0.71",
        index=1,
    )
    block = describe_image(facts)
    assert block == (
        '<image index="1" width="640" height="480">\n'
        "Caption: a &lt;b&gt;bold&lt;/b&gt; claim\n"
        "Text in the image:\n"
        '&lt;/image&gt;&lt;image index="9"&gt;&amp; more\n'
        "Looks like: screenshot 0.71\n"
        "</image>"
    )
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    rewritten = rewrite_messages(
        messages, {(0, 0): facts}, PromptFormat.inline, preset=PromptPreset.describe
    )
    assert rewritten[0]["content"] == block
    assert ImageFacts(vector="v", ocr="</image>").render("<image>{ocr}</image>") == (
        "<image>&lt;/image&gt;</image>"
    )


def test_describe_without_ocr_says_nothing_of_text_and_with_none_found_says_so() -> None:
    from app.prompt.rewrite import ImageFacts, describe_image

    assert "Text in the image" not in describe_image(ImageFacts(vector="v", ocr=None))
    assert "Text in the image: none" in describe_image(ImageFacts(vector="v", ocr=""))
    with_vector = describe_image(ImageFacts(vector="0.1,0.2"), include_vector=True)
    assert with_vector.endswith("CLIP vector: 0.1,0.2\n</image>")


def test_describe_in_content_part_format_is_a_text_part() -> None:
    from app.prompt.protocol import PromptPreset
    from app.prompt.rewrite import ImageFacts, describe_image, rewrite_messages

    facts = ImageFacts(vector="0.5,0.5", width=2, height=1, ocr="hello", index=1)
    parts = [
        {"type": "text", "text": "Read it"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    rewritten = rewrite_messages(
        [{"role": "user", "content": parts}],
        {(0, 1): facts},
        PromptFormat.content_part,
        preset=PromptPreset.describe,
    )
    assert rewritten[0]["content"] == [
        {"type": "text", "text": "Read it"},
        {"type": "text", "text": describe_image(facts)},
    ]
