"""Settings: the whole configuration of one proxy process, read from `CLIP_PROXY_*`.

Build it in `create_app` (or the CLI), never at import time, so a test can hand in its own:

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

Bad values are refused when the process starts, with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.protocol import PromptFormat
from app.rewrite import ImageTemplates, template_fields

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda|cuda:\d+)$")

MiB = 1024 * 1024


class EncoderDtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class EncoderQuantize(StrEnum):
    none = "none"
    int8 = "int8"  # dynamic int8 Linear layers; CPU only


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of clip-proxy; each has a default that works."""

    model_config = SettingsConfigDict(env_prefix="CLIP_PROXY_", extra="ignore")

    # Upstream
    upstream_base_url: str = "https://api.lkeap.cloud.tencent.com/v1"
    upstream_api_key: SecretStr = SecretStr("")
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    # Reasoning models may think for minutes between bytes: the read timeout is long.
    upstream_read_timeout_s: float = Field(600.0, gt=0)
    default_model: str = "deepseek-r1"

    # Encoder
    clip_model: str = "openai/clip-vit-large-patch14"
    device: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    encoder_dtype: EncoderDtype = EncoderDtype.auto
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    encode_timeout_s: float = Field(60.0, gt=0)

    # Prompt rewriting
    prompt_format: PromptFormat = PromptFormat.inline
    embedding_decimals: int = Field(6, ge=1, le=9)

    # Client side
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cache_url: str = ""

    # Limits on what a client may send
    max_image_bytes: int = Field(20 * MiB, ge=1)
    max_images_per_request: int = Field(16, ge=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_body_bytes: int = Field(64 * MiB, ge=1)

    # Fetching image URLs: private and loopback targets are refused unless allowed here.
    fetch_timeout_s: float = Field(5.0, gt=0)
    fetch_max_redirects: int = Field(5, ge=0, le=20)
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_allow_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)

    # Encoder pool (issue #3): backpressure and speed options, each measured in
    # bench/encoder.py. A full queue answers 503 + Retry-After at once.
    encoder_queue_size: int = Field(1024, ge=1, le=1_000_000)
    encoder_quantize: EncoderQuantize = EncoderQuantize.none
    encoder_compile: bool = False
    preprocess_threads: int = Field(4, ge=1, le=64)
    # Observability (logs are JSON lines on stderr; see app/logging_setup.py)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Reliability and client auth (issue #5)
    # A file of client keys, one per line ('#' comments), read at start-up with API_KEYS.
    api_keys_file: Path | None = None
    # Require a client key on /metrics too (when client keys are configured).
    metrics_require_auth: bool = False
    # Retries toward the upstream, only before a byte went to the client.
    upstream_max_retries: int = Field(2, ge=0, le=10)
    upstream_retry_base_s: float = Field(0.5, gt=0)
    upstream_retry_max_s: float = Field(8.0, gt=0)
    upstream_max_connections: int = Field(256, ge=1)
    # Idle upstream connections older than this are closed (at the next request).
    upstream_keepalive_expiry_s: float = Field(30.0, gt=0)
    # Client-side rate limit toward the upstream (Tencent allows 3/s); 0 = off. A request
    # waits up to upstream_rate_limit_wait_s for its slot, then gets 429 with Retry-After.
    upstream_rate_limit_rps: float = Field(0.0, ge=0)
    upstream_rate_limit_wait_s: float = Field(2.0, ge=0)
    # SSE comment sent while a stream has been silent this long (load balancers cut idle
    # connections at 60 s, and a reasoning model may think for minutes); 0 = off.
    ping_interval: float = Field(15.0, ge=0)
    # --- Upstream edge (issue #11): egress proxy, TLS, body cap; see app/upstream/session.py ---
    # An egress proxy toward the upstream, http:// or https:// (credentials in the URL). Empty:
    # HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY from the environment, as httpx reads them.
    upstream_proxy: str = ""
    # A PEM file of the CAs that may sign the upstream's certificate (a private CA). Empty:
    # SSL_CERT_FILE when set, else the public bundle (certifi). Verification is always on.
    upstream_ca_file: Path | None = None
    # A client certificate (PEM) for mTLS toward the upstream, and its key (when not in it).
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None
    # A non-streamed upstream body larger than this, once decompressed, is a 502.
    upstream_max_body_bytes: int = Field(32 * MiB, ge=1)
    # Image URLs fetched through this proxy (opt-in; the environment is never read for it).
    # The SSRF rules still hold: the host is resolved and checked before anything is sent.
    fetch_proxy: str = ""

    # Requests in flight under /v1/ past which new ones get 503 + Retry-After; 0 = no limit.
    max_in_flight: int = Field(256, ge=0)
    # On SIGTERM: /readyz turns 503 at once; the listener closes after drain_delay_s (time
    # for a load balancer to notice); streams in flight get shutdown_grace_s to finish.
    drain_delay_s: float = Field(0.0, ge=0)
    shutdown_grace_s: float = Field(30.0, ge=0)

    @field_validator("device", mode="before")
    @classmethod
    def _parse_device(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("CLIP_PROXY_DEVICE is empty; use auto, cpu, cuda, cuda:N or a list")
        if value == ["auto"]:
            return value
        for device in value:
            if not _DEVICE_PATTERN.match(device):
                raise ValueError(f"CLIP_PROXY_DEVICE: {device!r} is not auto, cpu, cuda or cuda:N")
        return value

    @field_validator("api_keys", "fetch_allow_hosts", "fetch_allow_networks", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("fetch_allow_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower().rstrip(".") for host in value]

    @field_validator("upstream_base_url")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("CLIP_PROXY_UPSTREAM_BASE_URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("upstream_proxy", "fetch_proxy")
    @classmethod
    def _check_proxy(cls, value: str, info: ValidationInfo) -> str:
        # The message never quotes the value: a proxy URL may carry a password.
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(
                f"CLIP_PROXY_{str(info.field_name).upper()} must be an http:// or https:// URL"
            )
        return value

    @field_validator("upstream_ca_file", "upstream_client_cert", "upstream_client_key")
    @classmethod
    def _check_pem_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CLIP_PROXY_{str(info.field_name).upper()}: no file at {value}")
        return value

    @model_validator(mode="after")
    def _check_client_cert(self) -> Settings:
        if self.upstream_client_key is not None and self.upstream_client_cert is None:
            raise ValueError(
                "CLIP_PROXY_UPSTREAM_CLIENT_KEY is set without CLIP_PROXY_UPSTREAM_CLIENT_CERT"
            )
        return self

    @field_validator("cache_url")
    @classmethod
    def _check_cache_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("CLIP_PROXY_CACHE_URL must be empty or a redis:// URL")
        return value

    # --- Feature cache, conversation memory, zero-shot labels (issue #6) ---
    # In-process LRU of image vectors, bounded in bytes (about 3 KiB per image); 0 turns it off.
    cache_memory_bytes: int = Field(256 * MiB, ge=0)
    # Redis (CACHE_URL): entry lifetime, per-operation timeout, and the key prefix.
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    cache_timeout_ms: float = Field(100.0, gt=0, le=10_000)
    cache_key_prefix: str = "clip-proxy:"
    # Inline prompt templates; placeholders {vector} {labels} {sha256} {width} {height}.
    image_template: str = ImageTemplates.image
    retained_image_template: str = ImageTemplates.retained
    retained_ref_template: str = ImageTemplates.retained_ref
    # Earlier images that keep their full vector (the most recent); older ones become
    # retained_ref_template. -1: all of them.
    max_retained_vectors: int = Field(-1, ge=-1)
    # Zero-shot labels: the top k of a vocabulary (a file, one label per line; empty = the
    # shipped COCO + scenes list), each label encoded as labels_prompt. 0 turns them off.
    labels_top_k: int = Field(0, ge=0, le=100)
    labels_vocabulary: str = ""
    labels_prompt: str = "a photo of a {label}"

    @field_validator("image_template", "retained_image_template", "retained_ref_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        template_fields(value)  # raises ValueError naming the bad placeholder
        return value

    @field_validator("labels_prompt")
    @classmethod
    def _check_labels_prompt(cls, value: str) -> str:
        if "{label}" not in value:
            raise ValueError("CLIP_PROXY_LABELS_PROMPT must contain {label}")
        try:
            value.format(label="label")  # any other placeholder would fail at start-up
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"CLIP_PROXY_LABELS_PROMPT: only {{label}} may be in braces ({exc!r})"
            ) from exc
        return value

    @field_validator("api_keys_file", "labels_vocabulary")
    @classmethod
    def _check_file(cls, value: Path | str | None, info: ValidationInfo) -> Path | str | None:
        # Read at start-up: a wrong path is named here, not in a traceback from create_app.
        if value and not Path(value).is_file():
            raise ValueError(f"CLIP_PROXY_{str(info.field_name).upper()}: no file at {value}")
        return value

    @model_validator(mode="after")
    def _check_labels(self) -> Settings:
        if self.templates().uses("labels") and self.labels_top_k == 0:
            raise ValueError("a template uses {labels}: set CLIP_PROXY_LABELS_TOP_K to 1 or more")
        return self

    def templates(self) -> ImageTemplates:
        return ImageTemplates(
            image=self.image_template,
            retained=self.retained_image_template,
            retained_ref=self.retained_ref_template,
            max_retained_vectors=self.max_retained_vectors,
        )
