"""Settings: defaults from DESIGN.md, environment parsing, and refusal of bad values."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.prompt.protocol import PromptFormat


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLIP_PROXY_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.upstream_base_url == "https://api.lkeap.cloud.tencent.com/v1"
    assert settings.upstream_api_key.get_secret_value() == ""
    assert settings.default_model == "deepseek-r1"
    assert settings.clip_model == "openai/clip-vit-large-patch14"
    assert settings.device == ["auto"]
    assert settings.prompt_format is PromptFormat.inline
    assert settings.embedding_decimals == 6
    assert settings.api_keys == []
    assert settings.max_batch == 32
    assert settings.max_wait_ms == 5
    assert settings.cache_url == ""
    assert settings.max_image_bytes == 20 * 1024 * 1024
    assert settings.max_images_per_request == 16


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_PROXY_DEVICE", "cuda:0, cuda:1")
    monkeypatch.setenv("CLIP_PROXY_PROMPT_FORMAT", "content_part")
    monkeypatch.setenv("CLIP_PROXY_FETCH_ALLOW_NETWORKS", "10.0.0.0/8,fd00::/8")
    monkeypatch.setenv("CLIP_PROXY_UPSTREAM_BASE_URL", "http://vllm:8000/v1/")
    settings = Settings()
    assert settings.device == ["cuda:0", "cuda:1"]
    assert settings.prompt_format is PromptFormat.content_part
    assert [str(net) for net in settings.fetch_allow_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert settings.upstream_base_url == "http://vllm:8000/v1"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "gpu0", "is not auto, cpu, cuda or cuda:N"),
        ("prompt_format", "xml", "inline"),
        ("embedding_decimals", "0", "greater than or equal to 1"),
        ("max_batch", "0", "greater than or equal to 1"),
        ("upstream_base_url", "ftp://x", "must start with http"),
        ("cache_url", "memcached://x", "redis://"),
        ("fetch_allow_networks", "not-a-net", "fetch_allow_networks"),
    ],
)
def test_bad_values_are_refused(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        overrides: dict[str, Any] = {field: value}
        Settings(**overrides)


def test_client_keys_are_read_once_when_the_settings_are_built(tmp_path: Path) -> None:
    """Auth and the log redactor share one reading of API_KEYS and API_KEYS_FILE."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nkey-from-file\n\n  key-two  \n")
    settings = Settings(api_keys="key-from-env, ", api_keys_file=keys)
    keys.unlink()  # read already: nothing reads the file again
    assert settings.client_keys == ["key-from-env", "key-from-file", "key-two"]
    assert "key-from-file" not in repr(settings) and "key-from-file" not in str(settings)
    assert Settings(api_keys="", api_keys_file=None).client_keys == []


def test_serve_refuses_bad_configuration_with_a_clear_message() -> None:
    env = {**os.environ, "CLIP_PROXY_DEVICE": "tpu"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr and "tpu" in result.stderr


def test_a_settings_error_never_prints_a_password() -> None:
    env = {
        **os.environ,
        "CLIP_PROXY_CACHE_URL": "memcached://admin:hunter2-cache@cache.internal:11211",
        "CLIP_PROXY_UPSTREAM_PROXY": "socks5://admin:hunter2-proxy@egress.internal:1080",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CLIP_PROXY_CACHE_URL" in result.stderr
    assert "CLIP_PROXY_UPSTREAM_PROXY" in result.stderr
    assert "hunter2" not in result.stderr and "admin" not in result.stderr


def test_every_setting_is_in_the_readme_table_and_nothing_else() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_describe_settings_refuse_bad_values() -> None:
    from app.prompt.protocol import PromptPreset

    assert Settings().prompt_preset is PromptPreset.seed  # today's output unless asked
    assert len(Settings().labels_prompt.split("|")) == 4  # an ensemble by default
    for bad in (
        {"prompt_preset": "poetry"},
        {"labels_prompt": "a photo of a {label}|no placeholder here"},
        {"caption_device": "tpu"},
        {"ocr_device": "gpu"},
        {"ocr_max_chars": -1},
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_a_renamed_setting_keeps_its_old_environment_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PING_INTERVAL became PING_INTERVAL_S (every duration names its unit); deployments
    that set the old name keep working, the new name wins when both are set."""
    monkeypatch.setenv("CLIP_PROXY_PING_INTERVAL", "3")
    assert Settings().ping_interval_s == 3
    monkeypatch.setenv("CLIP_PROXY_PING_INTERVAL_S", "4")
    assert Settings().ping_interval_s == 4
    assert Settings(ping_interval_s=2).ping_interval_s == 2
