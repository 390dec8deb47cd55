"""Settings: the whole configuration of one proxy process, read from `CLIP_PROXY_*`.

Build it in `create_app` (or the CLI), never at import time, so a test can hand in its own:

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

Bad values are refused when the process starts, with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.prompt.documents import DOCUMENT_FIELDS, PAGE_FIELDS, DocumentTemplates, check_template
from app.prompt.protocol import PromptFormat, PromptPreset
from app.prompt.rewrite import ImageTemplates, template_fields
from app.runtime.cores import ocr_shape, usable_cores
from app.upstream.forward_headers import NEVER_FORWARDED
from app.vision.prompt import DEFAULT_PROMPT, prompt_fields
from app.vision.spec import DescriberSpec, check_specs

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda|cuda:\d+)$")

MiB = 1024 * 1024
# UPSTREAM_BASE_URL's value for the embedded upstream (app/echo/upstream.py).
ECHO_UPSTREAM = "echo"


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

    # populate_by_name: a renamed setting keeps its old environment name as an alias, and
    # code and tests still pass the field by its (new) name.
    model_config = SettingsConfigDict(
        env_prefix="CLIP_PROXY_", extra="ignore", populate_by_name=True
    )

    _client_keys: list[str] = PrivateAttr(default_factory=list)
    # Settings left at 0 ("auto") and what was chosen for them from: {field: reason}.
    _auto: dict[str, str] = PrivateAttr(default_factory=dict)

    # ---- The upstream: where requests go, how the hop behaves ----
    upstream_base_url: str = "https://api.lkeap.cloud.tencent.com/v1"
    upstream_api_key: SecretStr = SecretStr("")
    default_model: str = "deepseek-r1"
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    # Reasoning models may think for minutes between bytes: the read timeout is long.
    upstream_read_timeout_s: float = Field(600.0, gt=0)
    upstream_max_connections: int = Field(256, ge=1)
    # Idle upstream connections older than this are closed (at the next request).
    upstream_keepalive_expiry_s: float = Field(30.0, gt=0)
    # A non-streamed upstream body larger than this, once decompressed, is a 502.
    upstream_max_body_bytes: int = Field(32 * MiB, ge=1)
    # Retries toward the upstream, only before a byte went to the client.
    upstream_max_retries: int = Field(2, ge=0, le=10)
    upstream_retry_base_s: float = Field(0.5, gt=0)
    upstream_retry_max_s: float = Field(8.0, gt=0)
    # Client-side rate limit toward the upstream (Tencent allows 3/s); 0 = off. A request
    # waits up to upstream_rate_limit_wait_s for its slot, then gets 429 with Retry-After.
    upstream_rate_limit_rps: float = Field(0.0, ge=0)
    upstream_rate_limit_wait_s: float = Field(2.0, ge=0)
    # An egress proxy toward the upstream, http:// or https:// (credentials in the URL). Empty:
    # HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY from the environment, as httpx reads them.
    upstream_proxy: str = ""
    # A PEM file of the CAs that may sign the upstream's certificate (a private CA). Empty:
    # SSL_CERT_FILE when set, else the public bundle (certifi). Verification is always on.
    upstream_ca_file: Path | None = None
    # A client certificate (PEM) for mTLS toward the upstream, and its key (when not in it).
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None
    # Request headers sent on to the upstream besides traceparent and tracestate
    # (app/upstream/forward_headers.py); Authorization, Cookie and hop-by-hop headers never are.
    forward_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # SSE comment sent while a stream has been silent this long (load balancers cut idle
    # connections at 60 s, and a reasoning model may think for minutes); 0 = off.
    # (CLIP_PROXY_PING_INTERVAL, its name before every duration carried its unit, still works.)
    ping_interval_s: float = Field(
        15.0,
        ge=0,
        validation_alias=AliasChoices("CLIP_PROXY_PING_INTERVAL_S", "CLIP_PROXY_PING_INTERVAL"),
    )

    # ---- The CLIP encoder and its pool ----
    clip_model: str = "openai/clip-vit-large-patch14"
    device: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    encoder_dtype: EncoderDtype = EncoderDtype.auto
    encoder_quantize: EncoderQuantize = EncoderQuantize.none
    encoder_compile: bool = False
    # With ENCODER_COMPILE on CUDA: one CUDA graph per batch bucket ("reduce-overhead").
    encoder_cuda_graphs: bool = False
    # CUDA workers pipeline their batches (copy of N+1 beside compute of N); false: one
    # batch at a time, as on the CPU. CPU workers never pipeline.
    encoder_pipeline: bool = True
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    encoder_queue_size: int = Field(1024, ge=1, le=1_000_000)
    encode_timeout_s: float = Field(60.0, gt=0)
    preprocess_threads: int = Field(4, ge=1, le=64)
    # Decode JPEGs with nvJPEG on the first CUDA device (needs torchvision in the GPU image;
    # the CPU set-up never installs it); any image it refuses is decoded on the CPU.
    gpu_decode: bool = False

    # ---- The prompt sent upstream ----
    prompt_format: PromptFormat = PromptFormat.inline
    # seed: the seed's formats, byte for byte. describe: each image as text R1 can read.
    # A request may choose with `X-Clip-Proxy-Preset` or `"clip_proxy": {"preset": ...}`.
    prompt_preset: PromptPreset = PromptPreset.seed
    embedding_decimals: int = Field(6, ge=1, le=9)
    # describe: the vector too (thousands of tokens per image that a stock R1 cannot read).
    include_vector: bool = False
    # Inline prompt templates; placeholders {vector} {labels} {sha256} {width} {height}.
    image_template: str = ImageTemplates.image
    retained_image_template: str = ImageTemplates.retained
    retained_ref_template: str = ImageTemplates.retained_ref
    # Earlier images that keep their full vector (the most recent); older ones become
    # retained_ref_template. -1: all of them.
    max_retained_vectors: int = Field(-1, ge=-1)

    # ---- Words beside the vector: labels and tags, OCR, captions ----
    # Zero-shot labels: the top k of a vocabulary (a file, one label per line; empty = the
    # shipped COCO + scenes list), each label encoded as labels_prompt. 0 turns them off.
    labels_top_k: int = Field(0, ge=0, le=100)
    labels_vocabulary: str = ""
    # Several prompts separated by "|" are an ensemble: a label's vector is the normalised
    # mean of its prompts' vectors (CLIP's prompt ensembling).
    labels_prompt: str = (
        "a photo of a {label}.|a picture of a {label}.|a close-up photo of a {label}."
        "|an image of a {label}."
    )
    # Labels scoring below this (softmax over the vocabulary) are left out; 0 keeps top k.
    labels_min_score: float = Field(0.0, ge=0, le=1)
    # describe: the tags, the top k of the label vocabulary scoring at least the minimum.
    describe_tags_top_k: int = Field(5, ge=0, le=100)
    describe_tags_min_score: float = Field(0.05, ge=0, le=1)
    # OCR (RapidOCR, offline): its own pool beside CLIP; false: describe shows no text.
    ocr_enabled: bool = True
    ocr_max_chars: int = Field(2000, ge=0)
    # OCR worker threads (each its own model copy) and onnxruntime threads per worker;
    # 0: chosen from the cores the process may use (app/runtime/cores.py, `auto_chosen`).
    ocr_workers: int = Field(0, ge=0, le=64)
    ocr_threads: int = Field(0, ge=0, le=64)
    # cuda needs onnxruntime-gpu installed in place of onnxruntime.
    ocr_device: Literal["cpu", "cuda"] = "cpu"
    ocr_queue_size: int = Field(64, ge=1, le=100_000)
    ocr_timeout_s: float = Field(30.0, gt=0)
    # The no-text gate's optional pre-check: an image larger than this (longer side, px) is
    # first detected at this size (or 1/1.6 of its own), and not read when no text box shows
    # (app/engine/ocr_gate.py); 0: off, the full detection is the gate.
    ocr_gate_side: int = Field(0, ge=0, le=4096)
    # Text boxes recognised per image (top to bottom): the work per image, bounded up front.
    ocr_max_boxes: int = Field(200, ge=1, le=10_000)
    # layout: indentation, columns and tables rebuilt from the boxes; plain: lines in order.
    ocr_layout: Literal["layout", "plain"] = "layout"
    # An image whose OCR passed its deadline is not read again for this long (0: always).
    ocr_failure_ttl_s: float = Field(600.0, ge=0)
    # Captions: a transformers image-to-text checkpoint (hub id or directory); empty = off.
    caption_model: str = ""
    caption_device: str = "auto"
    caption_max_batch: int = Field(8, ge=1, le=256)
    caption_queue_size: int = Field(64, ge=1, le=100_000)
    caption_timeout_s: float = Field(60.0, gt=0)
    # Describers: OpenAI-compatible vision models asked for a description (a JSON list of
    # {"name", "base_url", "model", "api_key_env", "timeout_s", "concurrency"}), in order.
    describers: Annotated[list[DescriberSpec], NoDecode] = Field(default_factory=list)
    describer_timeout_s: float = Field(30.0, gt=0, le=600)
    describer_concurrency: int = Field(8, ge=1, le=1024)
    # A describer that failed is skipped this long; the next one is asked meanwhile.
    describer_cooldown_s: float = Field(60.0, ge=0)
    # The describer's prompt; {question} (the user's text of that turn) and {ocr}.
    describer_prompt: str = DEFAULT_PROMPT
    description_max_chars: int = Field(4000, ge=1, le=50_000)
    # Upstream models that take images themselves (names or fnmatch patterns, comma list).
    upstream_vision_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    passthrough_max_side: int = Field(2048, ge=16, le=16384)

    # ---- Documents (PDF and text files): read as words, text layer first, OCR otherwise ----
    document_max_pages: int = Field(100, ge=1, le=100_000)
    # Characters of document text per request; past it the text is cut (and the cut said).
    document_max_chars: int = Field(200_000, ge=1)
    max_document_bytes: int = Field(50 * MiB, ge=1)
    # Document parts and uploads per request, history included (400 past it).
    max_documents_per_request: int = Field(16, ge=0)
    document_timeout_s: float = Field(60.0, gt=0)
    # PDFs read at once, each in a process of its own, under this address-space cap.
    document_workers: int = Field(2, ge=1, le=64)
    document_memory_bytes: int = Field(2048 * MiB, ge=256 * MiB)
    # Pages without a text layer are rendered for OCR at this DPI, capped in pixels.
    document_render_dpi: int = Field(200, ge=50, le=600)
    document_render_max_pixels: int = Field(12_000_000, ge=100_000, le=100_000_000)
    # Placeholders: {index} {name} {pages} {read} {content} {left_out}; a page: {n} {read} {text}.
    document_template: str = DocumentTemplates.document
    document_page_template: str = DocumentTemplates.page

    # ---- The feature cache (vectors and words, by image content) ----
    cache_url: str = ""
    # In-process LRU of image vectors, bounded in bytes (about 3 KiB per image); 0 turns it off.
    cache_memory_bytes: int = Field(256 * MiB, ge=0)
    # Redis (CACHE_URL): entry lifetime, per-operation timeout, and the key prefix.
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    cache_timeout_ms: float = Field(100.0, gt=0, le=10_000)
    cache_key_prefix: str = "clip-proxy:"
    # Whose cache: key (each client key its own), shared (all clients), auto (key when
    # client keys are set, else shared).
    cache_scope: Literal["auto", "key", "shared"] = "auto"

    # ---- Stored responses (/v1/responses `store`), in the cache's Redis when CACHE_URL is set ----
    # false: `store: true` and `previous_response_id` are refused (400); nothing is kept.
    responses_store: bool = True
    responses_ttl_s: int = Field(24 * 3600, ge=1)

    # ---- Clients: keys and what is open to them ----
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # A file of client keys, one per line ('#' comments), read at start-up with API_KEYS.
    api_keys_file: Path | None = None
    # Require a client key on /metrics too (when client keys are configured).
    metrics_require_auth: bool = False
    # /docs, /redoc and /openapi.json (behind a client key when API_KEYS is set).
    docs: bool = True
    # The browser playground at /playground (and / redirecting there); false turns both off.
    playground: bool = True
    # Origins whose web pages may call the API (CORS), comma-separated, e.g.
    # https://app.example.com; `*` is any origin (only without client keys). Empty: none.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # ---- Limits on what a client may send or hold ----
    max_image_bytes: int = Field(20 * MiB, ge=1)
    max_images_per_request: int = Field(16, ge=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_body_bytes: int = Field(64 * MiB, ge=1)
    # Shapes no real chat has (a million one-word messages): refused before validation, whose
    # cost grows with them.
    max_messages: int = Field(2000, ge=1)
    max_content_parts: int = Field(10_000, ge=1)
    # A request head (request line and headers) longer than this gets 431 and is closed.
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * MiB)
    # A connection that has not finished its head this many seconds after it opened (or
    # after its previous request) is closed.
    header_timeout_s: float = Field(10.0, gt=0)
    # A body that has not fully arrived this many seconds after its head gets 408.
    body_timeout_s: float = Field(60.0, gt=0)
    # Bytes of request bodies being read or held, all requests together; past it a request
    # waits briefly, then gets 503 + Retry-After. 0 = no budget.
    max_inflight_body_bytes: int = Field(1024 * MiB, ge=0)
    # Requests in flight under /v1/ past which new ones get 503 + Retry-After; 0 = no limit.
    max_in_flight: int = Field(256, ge=0)
    # An answer sent before the body was read (401, 413, 503) goes after the rest of the
    # body is read and dropped, so the client reads it instead of a reset (nginx's lingering
    # close): at most this long in all, this long of silence, and this many bytes.
    lingering_time_s: float = Field(30.0, ge=0)
    lingering_timeout_s: float = Field(5.0, gt=0)
    lingering_max_bytes: int = Field(1024 * MiB, ge=0)

    # ---- Fetching image URLs: private and loopback targets are refused unless allowed here ----
    fetch_timeout_s: float = Field(5.0, gt=0)
    fetch_max_redirects: int = Field(5, ge=0, le=20)
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_allow_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)
    # Image URLs fetched through this proxy (opt-in; the environment is never read for it).
    # The SSRF rules still hold: the host is resolved and checked before anything is sent.
    fetch_proxy: str = ""

    # ---- The process: logs and shutdown ----
    log_level: Literal["debug", "info", "warning", "error"] = "info"
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

    @field_validator("forward_headers", mode="before")
    @classmethod
    def _parse_forward_headers(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("forward_headers")
    @classmethod
    def _check_forward_headers(cls, value: list[str]) -> list[str]:
        names = [name.lower() for name in value]
        refused = [name for name in names if name in NEVER_FORWARDED]
        if refused:
            raise ValueError(
                f"CLIP_PROXY_FORWARD_HEADERS: {', '.join(refused)} is never forwarded "
                "(credentials and hop-by-hop headers stay between the client and the proxy)"
            )
        return names

    @field_validator("describer_prompt")
    @classmethod
    def _check_describer_prompt(cls, value: str) -> str:
        prompt_fields(value)  # raises ValueError naming the bad placeholder
        return value

    @field_validator("describers", mode="before")
    @classmethod
    def _parse_describers(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of describers: {exc}") from None
        return value

    @field_validator("describers")
    @classmethod
    def _check_describers(cls, value: list[DescriberSpec]) -> list[DescriberSpec]:
        check_specs(value)
        return value

    @field_validator("upstream_vision_models", mode="before")
    @classmethod
    def _parse_vision_models(cls, value: object) -> object:
        return _split_commas(value)

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
        if value.strip().lower() == ECHO_UPSTREAM:
            return ECHO_UPSTREAM
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "CLIP_PROXY_UPSTREAM_BASE_URL must start with http:// or https://, or be 'echo'"
            )
        return value.rstrip("/")

    @property
    def echo_upstream(self) -> bool:
        return self.upstream_base_url == ECHO_UPSTREAM

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
    def _choose_ocr_shape(self) -> Settings:
        if self.ocr_workers and self.ocr_threads:
            return self
        cores = usable_cores()
        workers, threads = ocr_shape(cores)
        for field, value in (("ocr_workers", workers), ("ocr_threads", threads)):
            if not getattr(self, field):
                setattr(self, field, value)
                self._auto[field] = f"auto: {cores} usable cores"
        return self

    @property
    def auto_chosen(self) -> dict[str, str]:
        """Settings chosen by the process (left at 0): field -> what they were chosen from."""
        return dict(self._auto)

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

    @field_validator("image_template", "retained_image_template", "retained_ref_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        template_fields(value)  # raises ValueError naming the bad placeholder
        return value

    @field_validator("document_template")
    @classmethod
    def _check_document_template(cls, value: str) -> str:
        return check_template(value, DOCUMENT_FIELDS)

    @field_validator("document_page_template")
    @classmethod
    def _check_page_template(cls, value: str) -> str:
        return check_template(value, PAGE_FIELDS)

    @field_validator("labels_prompt")
    @classmethod
    def _check_labels_prompt(cls, value: str) -> str:
        for prompt in value.split("|"):
            if "{label}" not in prompt:
                raise ValueError("CLIP_PROXY_LABELS_PROMPT: every prompt must contain {label}")
            try:
                prompt.format(label="label")  # any other placeholder would fail at start-up
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"CLIP_PROXY_LABELS_PROMPT: only {{label}} may be in braces ({exc!r})"
                ) from exc
        return value

    @field_validator("caption_device")
    @classmethod
    def _check_caption_device(cls, value: str) -> str:
        if value != "auto" and not _DEVICE_PATTERN.match(value):
            raise ValueError(f"CLIP_PROXY_CAPTION_DEVICE: {value!r} is not auto, cpu or cuda:N")
        return value

    @field_validator("api_keys_file", "labels_vocabulary")
    @classmethod
    def _check_file(cls, value: Path | str | None, info: ValidationInfo) -> Path | str | None:
        # Read at start-up: a wrong path is named here, not in a traceback from create_app.
        if value and not Path(value).is_file():
            raise ValueError(f"CLIP_PROXY_{str(info.field_name).upper()}: no file at {value}")
        return value

    @model_validator(mode="after")
    def _read_client_keys(self) -> Settings:
        # Read once, here: client auth and the log redactor (`clip-proxy serve`) both use
        # them, and a file that cannot be read is a configuration error like any other.
        self._client_keys = read_client_keys(self.api_keys, self.api_keys_file)
        return self

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("cors_allow_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = [origin.rstrip("/") for origin in value]
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"CLIP_PROXY_CORS_ALLOW_ORIGINS: {origin!r} is no origin; write it as "
                    "https://app.example.com (scheme, host, port if any)"
                )
        return origins

    @model_validator(mode="after")
    def _check_cors_with_keys(self) -> Settings:
        if "*" in self.cors_allow_origins and self._client_keys:
            raise ValueError(
                "CLIP_PROXY_CORS_ALLOW_ORIGINS=* with client keys would let any web page "
                "spend a key a visitor's browser holds: name the origins instead"
            )
        return self

    @property
    def client_keys(self) -> list[str]:
        """Every client key: those of API_KEYS and those of API_KEYS_FILE."""
        return list(self._client_keys)

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


def read_client_keys(keys: Iterable[SecretStr], keys_file: Path | None) -> list[str]:
    """Client keys from the setting and from a file of one key per line (`#` comments)."""
    values = [key.get_secret_value() for key in keys]
    if keys_file is not None:
        for line in keys_file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                values.append(line)
    return [value for value in values if value]
