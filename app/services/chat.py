"""One chat request, end to end: find its images, encode them, rewrite, send upstream.

Knows nothing of HTTP frameworks: it takes a validated request and returns what to answer,
and the route picks the response class.

    outcome = await service.complete(request, uploads=[], dry_run=False)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from app.documents.reader import DocumentReader
from app.engine.engine import Engine
from app.errors import InvalidRequest, TooManyImages, UpstreamStatus, first_proxy_error
from app.ingest.documents import DocumentSource
from app.ingest.sources import ImageSource
from app.metrics import Metrics
from app.observability.request_context import note_fact, note_response_header, note_stage
from app.prompt.protocol import (
    IMAGE_SIZES_HEADER,
    ChatCompletionRequest,
    PromptFormat,
    PromptPreset,
    UploadedImagePart,
    is_image_part,
)
from app.prompt.rewrite import (
    ImageFacts,
    ImageTemplates,
    Location,
    Message,
    append_to_last_user,
    clip_text,
    format_vector,
    rewrite_messages,
)
from app.services.documents import (
    TRUNCATED_HEADER,
    DocumentOptions,
    DocumentsSeen,
    attach_document_uploads,
    read_documents,
)
from app.upstream.client import UpstreamClient
from app.upstream.response import UpstreamResponse
from app.upstream.stream_meter import StreamMeter, count_tokens
from app.vision.bridge import Seen, VisionBridge, VisionOptions
from app.vision.prompt import question_of

# The longest caption put in a prompt (a captioner writes one sentence).
CAPTION_MAX_CHARS = 1000


@dataclass(frozen=True)
class DryRun:
    """What would have gone upstream, and the characters of its messages."""

    body: dict[str, Any]
    prompt_chars: int = 0
    # Which way each image went, in request order: bridge, described:<name>, fallback,
    # passthrough (the X-Clip-Proxy-Image-Routes header).
    image_routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JsonReply:
    status_code: int
    body: bytes
    media_type: str


@dataclass(frozen=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    media_type: str
    # The upstream response's idempotent `aclose`: releases it whatever happened to
    # `chunks` (a client that leaves before the body starts never pulls a chunk).
    close: Callable[[], Awaitable[None]]


ChatOutcome = DryRun | JsonReply | StreamReply


@dataclass(frozen=True)
class ChatLimits:
    """What one chat request may carry. The service counts the images; the route applies the
    byte limits while it reads the body (uploads arrive before the service sees them)."""

    max_images: int
    max_image_bytes: int
    max_body_bytes: int
    max_document_bytes: int = 50 * 1024 * 1024
    max_messages: int = 2000
    max_content_parts: int = 10_000


@dataclass(frozen=True)
class ChatOptions:
    default_model: str
    prompt_format: PromptFormat
    decimals: int
    limits: ChatLimits
    # Seconds of upstream silence before the relay sends a keep-alive comment (0: never).
    ping_interval_s: float
    templates: ImageTemplates = field(default_factory=ImageTemplates)
    # Toward the embedded echo upstream only: each image's pixel size in a header, for its
    # account of what it received (the seed's prompt does not carry sizes).
    send_image_sizes: bool = False
    preset: PromptPreset = PromptPreset.seed
    include_vector: bool = False
    ocr_max_chars: int = 2000
    documents: DocumentOptions = field(default_factory=DocumentOptions)
    description_max_chars: int = 4000


class ChatService:
    """Orchestrates one chat completion through the proxy."""

    def __init__(
        self,
        options: ChatOptions,
        engine: Engine,
        upstream: UpstreamClient,
        *,
        metrics: Metrics | None = None,
        documents: DocumentReader | None = None,
        vision: VisionBridge | None = None,
    ) -> None:
        self._options = options
        self._vision = vision or VisionBridge(None, None, VisionOptions(), metrics or Metrics())
        self._engine = engine
        self._upstream = upstream
        self._metrics = metrics or Metrics()
        self._documents = documents

    @property
    def limits(self) -> ChatLimits:
        return self._options.limits

    @property
    def ping_interval_s(self) -> float:
        return self._options.ping_interval_s

    @property
    def default_model(self) -> str:
        return self._options.default_model

    async def complete(
        self,
        request: ChatCompletionRequest,
        uploads: Sequence[ImageSource | DocumentSource] = (),
        *,
        dry_run: bool = False,
        preset: PromptPreset | None = None,
        prompt_format: PromptFormat | None = None,
        dialect: str = "chat",
    ) -> ChatOutcome:
        """`preset` and `prompt_format` are the request's header choices (the body's
        `clip_proxy.preset` wins over the header); the settings decide otherwise. `dialect`
        labels the stream metrics (the wire API the client spoke)."""
        options = request.clip_proxy
        preset = (options.preset if options else None) or preset or self._options.preset
        body = request.upstream_body()
        messages: list[Message] = body["messages"]
        images_uploaded = [upload for upload in uploads if isinstance(upload, ImageSource)]
        attach_uploads(messages, len(images_uploaded))
        attach_document_uploads(
            messages, [upload for upload in uploads if isinstance(upload, DocumentSource)]
        )
        await self._read_documents(messages, options.pages if options else None)
        sources = collect_image_sources(messages, images_uploaded)
        max_images = self._options.limits.max_images
        if len(sources) > max_images:
            raise TooManyImages(
                f"{len(sources)} images in one request; the limit is {max_images}",
                param="messages",
            )
        model = body.get("model") or self._options.default_model
        if self._vision.sees(model):
            preset = PromptPreset.passthrough  # an upstream that sees gets the images
        images = await self._encode_all(sources, messages, preset)
        body["messages"] = rewrite_messages(
            messages,
            images,
            prompt_format or self._options.prompt_format,
            self._options.templates,
            preset=preset,
            include_vector=self._options.include_vector,
        )
        body["model"] = body.get("model") or self._options.default_model
        prompt_chars = len(orjson.dumps(body["messages"]).decode())
        self._metrics.prompt_chars.labels(preset=preset.value).observe(prompt_chars)
        if dry_run:
            routes = tuple(images[where].route for where in sorted(images))
            return DryRun(body, prompt_chars, routes)
        stream = bool(body.get("stream"))
        headers: dict[str, str] = {}
        if self._options.send_image_sizes and images:
            sizes = (f"{images[where].width}x{images[where].height}" for where in sorted(images))
            headers[IMAGE_SIZES_HEADER] = ",".join(sizes)
        sent_at = time.perf_counter()
        reply = await self._send_upstream(orjson.dumps(body), stream, headers)
        headers_at = time.perf_counter()
        if stream:
            meter = StreamMeter(
                self._metrics, sent_at=sent_at, headers_at=headers_at, dialect=dialect
            )
            return StreamReply(reply.relay(meter), reply.media_type, reply.aclose)
        answer = await reply.read()
        self._metrics.upstream_duration.labels(mode="json").observe(time.perf_counter() - sent_at)
        if b'"usage"' in answer:
            count_tokens(self._metrics, _usage_of(answer))
        return JsonReply(reply.status_code, answer, reply.media_type)

    async def _read_documents(self, messages: list[Message], pages: str | None) -> None:
        """Every document part becomes its words (app/services/documents.py)."""
        if self._documents is None:
            if any(
                isinstance(part, dict) and part.get("type") == "file"
                for message in messages
                if isinstance(message.get("content"), list)
                for part in message["content"]
            ):
                raise InvalidRequest("this proxy does not read documents", code="invalid_document")
            return
        seen: DocumentsSeen = await read_documents(
            messages, self._documents, self._options.documents, pages=pages
        )
        if seen.documents:
            note_fact("documents", len(seen.documents))
        if seen.truncated:
            note_response_header(TRUNCATED_HEADER, "true")

    async def _send_upstream(
        self, payload: bytes, stream: bool, headers: dict[str, str]
    ) -> UpstreamResponse:
        """Send the chat request and wait for the upstream's headers; observe that wait."""
        sent_at = time.perf_counter()
        try:
            reply = await self._upstream.open(
                "POST", "/chat/completions", body=payload, stream=stream, extra_headers=headers
            )
        except UpstreamStatus as exc:
            self._metrics.upstream_responses.labels(code=str(exc.status_code)).inc()
            raise
        ttfb = time.perf_counter() - sent_at
        self._metrics.upstream_ttfb.observe(ttfb)
        self._metrics.upstream_responses.labels(code=str(reply.status_code)).inc()
        note_stage("upstream_ttfb", ttfb)
        return reply

    async def _encode_all(
        self,
        sources: dict[Location, ImageSource],
        messages: list[Message],
        preset: PromptPreset,
    ) -> dict[Location, ImageFacts]:
        if not sources:
            return {}
        started = time.perf_counter()
        results: dict[Location, Seen] = {}
        words = preset is PromptPreset.describe
        # A describer for the describe preset, or for a template that shows {description}.
        describe = words or self._options.templates.uses("description")

        async def encode_one(location: Location, source: ImageSource) -> None:
            results[location] = await self._vision.see(
                self._engine,
                source,
                # The text of the turn the image came with: a retained image in a later
                # turn is asked the same question, and its description comes from the cache.
                question=question_of(messages[location[0]]),
                words=words,
                describe=describe,
                passthrough=preset is PromptPreset.passthrough,
            )

        try:
            # A TaskGroup cancels the siblings of a failed image, so one bad image stops
            # its request's other encodes instead of leaving them to run for nobody.
            async with asyncio.TaskGroup() as group:
                for location, source in sources.items():
                    group.create_task(encode_one(location, source))
        except ExceptionGroup as group_error:
            raise first_proxy_error(group_error) from None
        note_stage("images", time.perf_counter() - started)  # all images, side by side
        # A history repeats its images: each distinct one is formatted (and labelled) once.
        facts_by_sha: dict[str, ImageFacts] = {}
        for seen in results.values():
            if seen.sha256 not in facts_by_sha:
                facts_by_sha[seen.sha256] = self._facts(seen)
        # Each image part is numbered in request order, repeats included.
        return {
            location: replace(
                facts_by_sha[results[location].sha256],
                index=number,
                description=clip_text(
                    results[location].description, self._options.description_max_chars
                ),
                route=results[location].route,
            )
            for number, location in enumerate(sorted(results), start=1)
        }

    def _facts(self, seen: Seen) -> ImageFacts:
        described = seen.described
        if described is None:  # passthrough: the image itself, no CLIP, no OCR
            return ImageFacts(
                vector="",
                sha256=seen.sha256,
                width=seen.width,
                height=seen.height,
                image_url=seen.image_url,
            )
        embedding, ocr = described.embedding, described.ocr
        return ImageFacts(
            vector=format_vector(embedding.vector, self._options.decimals),
            sha256=embedding.sha256,
            width=embedding.width,
            height=embedding.height,
            labels=described.labels,
            tags=described.tags,
            ocr=None if ocr is None else clip_text(ocr, self._options.ocr_max_chars),
            # A sentence from the model; the cap holds whatever a cache entry says.
            caption=clip_text(described.caption, CAPTION_MAX_CHARS),
        )


def _usage_of(answer: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def attach_uploads(messages: list[Message], count: int) -> None:
    """Put `count` uploaded-image parts at the end of the last user message, after its text."""
    append_to_last_user(messages, [UploadedImagePart(index) for index in range(count)])


def collect_image_sources(
    messages: list[Message], uploads: Sequence[ImageSource]
) -> dict[Location, ImageSource]:
    sources: dict[Location, ImageSource] = {}
    for message_index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            location = (message_index, part_index)
            if isinstance(part, UploadedImagePart):
                sources[location] = uploads[part.index]
            elif is_image_part(part):
                param = f"messages[{message_index}].content[{part_index}].image_url"
                sources[location] = ImageSource.from_url(part["image_url"]["url"], param)
    return sources
