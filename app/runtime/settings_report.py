"""What the settings are and where each came from, for `clip-proxy config`, and the
`CLIP_PROXY_*` variables no setting reads (a typo), for one warning at start.

    for row in effective_settings(settings, os.environ):
        print(row.variable, row.value, row.source)     # secrets masked
    unknown_variables(os.environ)   # [("CLIP_PROXY_PROMT_PRESET", "CLIP_PROXY_PROMPT_PRESET")]
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, SecretStr

from app.config import Settings

PREFIX = "CLIP_PROXY_"
MASK = "********"
# Settings whose value is read from a file another setting names.
FROM_FILE = {"api_keys": "api_keys_file"}


@dataclass(frozen=True)
class SettingRow:
    variable: str  # the environment variable that sets it
    value: str  # as it takes effect, secrets masked
    source: str  # "default", "environment" or "file (CLIP_PROXY_..._FILE)"


def variable_names(field: str) -> list[str]:
    """The environment variables that set one field (a renamed one keeps its old name)."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [PREFIX + field.upper()]


def known_variables() -> set[str]:
    return {name.upper() for field in Settings.model_fields for name in variable_names(field)}


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each `CLIP_PROXY_*` variable no setting reads, with the closest known name (or None)."""
    known = known_variables()
    # Compared without the prefix, which every name shares.
    suffixes = sorted(name.removeprefix(PREFIX) for name in known)
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper.removeprefix(PREFIX), suffixes, n=1)
            unknown.append((name, PREFIX + close[0] if close else None))
    return unknown


def effective_settings(settings: Settings, environ: Mapping[str, str]) -> list[SettingRow]:
    """Every setting as it takes effect, secrets masked, with where its value came from."""
    present = {name.upper() for name in environ}
    rows = []
    for field in Settings.model_fields:
        names = variable_names(field)
        set_by = next((name for name in names if name.upper() in present), None)
        source = "environment" if set_by else "default"
        file_field = FROM_FILE.get(field)
        value: Any = getattr(settings, field)
        if file_field and getattr(settings, file_field) is not None:
            from_file = f"file ({PREFIX}{file_field.upper()})"
            source = f"environment and {from_file}" if set_by else from_file
            value = [MASK] * len(settings.client_keys)
        if field in settings.auto_chosen:  # left at 0: chosen by the process
            source = f"{source} ({settings.auto_chosen[field]})"
        rows.append(SettingRow(set_by or names[0], _shown(value), source))
    return rows


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_shown(item) for item in value)
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    # One row per setting: a template's line breaks are shown as the `\n` that sets them.
    return _without_password(str(value)).replace("\\", "\\\\").replace("\n", "\\n")


def _without_password(text: str) -> str:
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        if parts.password is None:
            return text
    except ValueError:
        return MASK
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{MASK}@{host}"))
