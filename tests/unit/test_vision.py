"""The vision package's pure parts: CLIP_PROXY_DESCRIBERS parsing, the describer prompt,
the passthrough re-encode, and the description in the prompt templates."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, PngImagePlugin
from pydantic import ValidationError

from app.config import Settings
from app.ingest.sources import ImageLimits, decode_image
from app.prompt.protocol import PromptFormat, PromptPreset
from app.prompt.rewrite import ImageFacts, ImageTemplates, rewrite_messages
from app.vision.describer import DescriberFailed, text_of
from app.vision.passthrough import as_it_came, prepare
from app.vision.prompt import DEFAULT_PROMPT, QUESTION_MAX_CHARS, question_of, render_prompt

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=40_000_000)


def test_describers_are_read_from_json_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("I26_KEY", "sk-x")
    monkeypatch.setenv(
        "CLIP_PROXY_DESCRIBERS",
        json.dumps(
            [
                {"base_url": "http://127.0.0.1:8001/v1/", "model": "Qwen/Qwen2.5-VL-7B"},
                {
                    "name": "hosted",
                    "base_url": "https://api.example.com/v1",
                    "model": "gpt-4o-mini",
                    "api_key_env": "I26_KEY",
                    "timeout_s": 10,
                    "concurrency": 2,
                },
            ]
        ),
    )
    monkeypatch.setenv("CLIP_PROXY_UPSTREAM_VISION_MODELS", "gpt-4o*, qwen-vl-max")
    settings = Settings()
    local, hosted = settings.describers
    assert local.label == "Qwen-Qwen2.5-VL-7B" and local.base_url == "http://127.0.0.1:8001/v1"
    assert local.timeout_s is None and local.concurrency is None  # the defaults apply
    assert hosted.label == "hosted" and hosted.api_key() == "sk-x"
    assert "sk-x" not in repr(settings.describers)  # the key is read, never held in settings
    assert settings.upstream_vision_models == ["gpt-4o*", "qwen-vl-max"]
    assert settings.describer_cooldown_s == 60


@pytest.mark.parametrize(
    "entry",
    [
        {"base_url": "ftp://x/v1", "model": "m"},
        {"base_url": "http://x/v1"},
        {"base_url": "http://x/v1", "model": "m", "colour": "red"},
        {"base_url": "http://x/v1", "model": "m", "name": "has space"},
    ],
)
def test_a_bad_describer_entry_is_refused(entry: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(describers=[entry])


def test_describers_that_are_not_json_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLIP_PROXY_DESCRIBERS", "[{'base_url': 'single quotes'}]")
    with pytest.raises(ValidationError, match="not a JSON list of describers"):
        Settings()


def test_two_describers_of_one_name_are_refused() -> None:
    entry = {"base_url": "http://x/v1", "model": "m"}
    with pytest.raises(ValidationError, match="two describers"):
        Settings(describers=[entry, entry])


def test_the_prompt_carries_the_question_capped_and_refuses_unknown_placeholders() -> None:
    prompt = render_prompt(DEFAULT_PROMPT, question="Wie  spät\nist es?", ocr="")
    assert "The user's question: Wie spät ist es?" in prompt
    long = render_prompt("{question}", question="x" * 5000, ocr="")
    assert len(long) == QUESTION_MAX_CHARS
    assert render_prompt("Q: {question} T: {ocr}", question="", ocr="42") == "Q: (none) T: 42"
    with pytest.raises(ValidationError, match="unknown placeholder"):
        Settings(describer_prompt="Describe {image}")
    message = {"role": "user", "content": [{"type": "text", "text": "Why?"}, {"type": "x"}]}
    assert question_of(message) == "Why?"


def test_a_describer_answer_must_be_a_completion_with_text() -> None:
    completion = {"choices": [{"message": {"content": "  A cat. "}}]}
    assert text_of(json.dumps(completion).encode()) == "A cat."
    for bad in (b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": ""}}]}'):
        with pytest.raises(DescriberFailed) as failed:
            text_of(bad)
        assert failed.value.outcome == "bad_response"


def test_prepare_strips_metadata_and_bounds_the_size() -> None:
    image = Image.new("RGB", (3000, 1000), "green")
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone@example.com")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    prepared = prepare(
        buffer.getvalue(), max_side=1000, decode=lambda data: decode_image(data, LIMITS, param=None)
    )
    assert (prepared.width, prepared.height) == (1000, 333)
    assert prepared.mime == "image/jpeg"
    back = Image.open(io.BytesIO(prepared.data))
    assert back.size == (1000, 333) and not back.getexif() and "Author" not in back.info
    assert prepared.data_url.startswith("data:image/jpeg;base64,/9j/")


def test_the_description_placeholder_is_in_every_template_and_escaped() -> None:
    facts = ImageFacts(vector="0.1,0.2", index=1, description="a <b>bold</b> claim")
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    ]
    seed = rewrite_messages(
        messages,
        {(0, 0): facts},
        PromptFormat.inline,
        ImageTemplates(image="<image>{description}|{vector}</image>"),
    )
    assert seed[0]["content"] == "<image>a &lt;b&gt;bold&lt;/b&gt; claim|0.1,0.2</image>"
    described = rewrite_messages(
        messages, {(0, 0): facts}, PromptFormat.inline, preset=PromptPreset.describe
    )
    assert "Description: a &lt;b&gt;bold&lt;/b&gt; claim" in described[0]["content"]
    assert Settings(image_template="<image>{description}</image>").templates().uses("description")


def test_only_a_clean_image_within_bounds_goes_as_it_came() -> None:
    def encoded(fmt: str, size: tuple[int, int] = (100, 50), **options: object) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, "red").save(buffer, fmt, **options)
        return buffer.getvalue()

    clean_jpeg, clean_png = encoded("JPEG"), encoded("PNG")
    assert as_it_came(clean_jpeg, max_side=100) is not None
    same = as_it_came(clean_png, max_side=100)
    assert same is not None and same.data == clean_png and same.mime == "image/png"
    exif = Image.Exif()
    exif[0x0112] = 6
    assert as_it_came(encoded("JPEG", exif=exif), max_side=100) is None
    assert as_it_came(encoded("JPEG", comment=b"from a camera"), max_side=100) is None
    assert as_it_came(encoded("JPEG", (101, 50)), max_side=100) is None
    assert as_it_came(encoded("WEBP"), max_side=100) is None
    assert as_it_came(b"not an image", max_side=100) is None
