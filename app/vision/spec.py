"""One describer as the operator writes it in `CLIP_PROXY_DESCRIBERS` (a JSON list):

    [{"name": "local", "base_url": "http://127.0.0.1:8001/v1",
      "model": "Qwen/Qwen2.5-VL-7B-Instruct", "api_key_env": "VLM_KEY",
      "timeout_s": 30, "concurrency": 8}]

`name`, `api_key_env`, `timeout_s` and `concurrency` may be left out: the name is then the
model's, the timeout and concurrency the DESCRIBER_TIMEOUT_S / DESCRIBER_CONCURRENCY
defaults. The key is never written here: `api_key_env` names the variable that holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class DescriberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1, max_length=256)
    api_key_env: str = ""
    timeout_s: float | None = Field(None, gt=0, le=600)
    concurrency: int | None = Field(None, ge=1, le=1024)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # A metric label and a dry-run header value: short, plain.
        if value and not _NAME.match(value):
            raise ValueError(f"name {value!r}: letters, digits and . _ : - only, 64 at most")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env(cls, value: str) -> str:
        if value and not _ENV.match(value):
            raise ValueError(f"api_key_env {value!r} is not an environment variable name")
        return value

    @property
    def label(self) -> str:
        """The describer's name in metrics, logs and the dry run."""
        return self.name or _label_of(self.model)

    def api_key(self) -> str:
        """The key, read from the variable named by `api_key_env` (empty: none sent)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


def _label_of(model: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "-", model)[:64]
    return cleaned or "describer"


def check_specs(specs: Sequence[DescriberSpec]) -> None:
    """ValueError for two describers of one name, or a key variable that is not set."""
    seen: set[str] = set()
    for spec in specs:
        if spec.label in seen:
            raise ValueError(f"two describers are named {spec.label!r}; give each a name")
        seen.add(spec.label)
        if spec.api_key_env and spec.api_key_env not in os.environ:
            raise ValueError(
                f"describer {spec.label!r}: api_key_env names {spec.api_key_env}, which is not set"
            )
