"""Content parts the proxy does not bridge reach the upstream as the client sent them:
`input_audio`, an assistant's `refusal` (joined as text under `inline`), and any part type
the proxy does not know. A `file` part is refused by name until the proxy reads documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.helpers import DATA, ProxyServer, data_url
from tests.upstream_server import FakeUpstream

AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRgAAAABXQVZF", "format": "wav"}}
VENDOR = {"type": "x-vendor-thing", "x-vendor-thing": {"nested": [1, {"a": None}]}}


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)


def sent_messages(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return upstream.requests[-1].json["messages"]  # type: ignore[no-any-return]


def test_input_audio_passes_through_beside_a_rewritten_image(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(DATA / "coffee.png")}}
    content: Any = [{"type": "text", "text": "What is heard and seen?"}, AUDIO, image]
    answer = sdk(proxy).chat.completions.create(
        model="deepseek-r1", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content
    parts = sent_messages(upstream)[0]["content"]
    # inline cannot write audio as text: the list stays, the audio part as it was sent.
    assert parts[0] == {"type": "text", "text": "What is heard and seen?"}
    assert parts[1] == AUDIO
    assert parts[2]["type"] == "text" and parts[2]["text"].startswith("<image>")


def test_a_refusal_in_the_history_is_joined_as_text_inline(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    history: Any = [
        {"role": "user", "content": "Pick the lock."},
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Then describe a lock."}]},
    ]
    sdk(proxy).chat.completions.create(model="deepseek-r1", messages=history)
    sent = sent_messages(upstream)
    assert sent[1] == {"role": "assistant", "content": "I can't help with that."}
    assert sent[2]["content"] == "Then describe a lock."


def test_parts_are_untouched_in_the_content_part_format(
    start_proxy: Callable[..., ProxyServer], upstream: FakeUpstream
) -> None:
    proxy = start_proxy(prompt_format="content_part")
    refusal = {"type": "refusal", "refusal": "No."}
    image = {"type": "image_url", "image_url": {"url": data_url(DATA / "camera.png")}}
    messages: Any = [
        {"role": "assistant", "content": [refusal]},
        {"role": "user", "content": [VENDOR, AUDIO, image]},
    ]
    sdk(proxy).chat.completions.create(model="deepseek-r1", messages=messages)
    sent = sent_messages(upstream)
    assert sent[0]["content"] == [refusal]
    assert sent[1]["content"][:2] == [VENDOR, AUDIO]
    assert sent[1]["content"][2]["type"] == "image_embedding"


def test_an_unknown_part_type_passes_through_inline(
    proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "hi"}, VENDOR]}]
    sdk(proxy).chat.completions.create(model="deepseek-r1", messages=messages)
    assert sent_messages(upstream)[0]["content"] == [{"type": "text", "text": "hi"}, VENDOR]


def test_a_part_without_a_type_is_refused_by_name(proxy: ProxyServer) -> None:
    messages: Any = [{"role": "user", "content": [{"text": "x"}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(proxy).chat.completions.create(model="deepseek-r1", messages=messages)
    error = raised.value.response.json()["error"]
    assert error["param"] == "messages[0].content[0]"
    assert "needs a string 'type'" in error["message"]


def test_a_file_part_by_id_asks_for_file_data(proxy: ProxyServer) -> None:
    # The proxy reads documents sent as `file_data`; it has no Files API to look an id up in.
    messages: Any = [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(proxy).chat.completions.create(model="deepseek-r1", messages=messages)
    error = raised.value.response.json()["error"]
    assert error["param"] == "messages[0].content[0].file.file_id"
    assert "file_data" in error["message"]
