"""Structured logs: one JSON object per line on stderr, each with its request's id.

`clip-proxy serve` calls `configure_logging` once; `create_app` never touches logging, so
tests (and pytest's caplog) keep theirs. Every line carries `ts`, `level`, `logger`, `msg`,
`request_id` (when logged while serving a request) and the `extra={...}` fields given.

What must never reach a log, whatever a message or an exception says: API keys (the
configured secrets are masked by value, `Bearer` tokens by shape), image bytes and base64
(data URLs and long base64 runs are cut out).

    configure_logging("info", secrets=[settings.upstream_api_key.get_secret_value()])
    logger.info("encoder ready", extra={"devices": ["cuda:0"]})
    # {"ts":"2025-01-01T10:00:00.123Z","level":"INFO","logger":"app.main","msg":"encoder ready",...}
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from app.observability.request_context import current_request_id

# Attributes every LogRecord has; anything else on a record came from `extra=`
# (uvicorn's `color_message` is its message again, with terminal colour codes).
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}

_DATA_URL = re.compile(r"data:[\w.+/-]*(?:;[^;,\"\s]*)*;base64,[A-Za-z0-9+/=_-]*", re.I)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{120,}={0,2}")
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',]+", re.I)


class Redactor:
    """Masks secrets and image payloads in a finished log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a key that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        text = _DATA_URL.sub("data:[redacted]", text)
        text = _BEARER.sub(r"\1[redacted]", text)
        return _BASE64_RUN.sub("[redacted base64]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line, redacted."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is not None:
            line["request_id"] = request_id
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name != "request_id" and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        text = orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._redact(text)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


THIRD_PARTY_LOGGERS = ("uvicorn", "uvicorn.error", "transformers", "huggingface_hub")


def configure_logging(level: str = "info", *, secrets: Iterable[str] = ()) -> None:
    """Send every logger (ours, uvicorn's, libraries') through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(Redactor(secrets)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that print through handlers of their own (transformers and huggingface_hub
    # add a plain-text one when imported, uvicorn's own config would): theirs go, and
    # their lines reach the JSON handler above. Called after those imports (the CLI
    # imports the app first), so the handlers they added are there to remove.
    for name in THIRD_PARTY_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    # `warnings.warn(...)` from libraries as JSON lines too, not raw text on stderr.
    logging.captureWarnings(True)
    # The request observer writes one line per request with timings; uvicorn's access
    # line would only repeat it, without the request id.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every upstream request line at INFO; our request line already covers it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
