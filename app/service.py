"""One chat request, end to end: find its images, encode them, rewrite, send upstream.

Knows nothing of HTTP frameworks: it takes a validated request and returns what to answer,
and the route picks the response class.

    outcome = await service.complete(request, uploads=[], dry_run=False)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.cache import ImageEmbedding
from app.errors import TooManyImages, UpstreamStatus, first_proxy_error
from app.image_pipeline import ImagePipeline
from app.ingest import ImageSource
from app.labels import Labeler
from app.metrics import Metrics
from app.protocol import ChatCompletionRequest, PromptFormat
from app.request_context import note_stage
from app.rewrite import (
    ImageFacts,
    ImageTemplates,
    Location,
    Message,
    format_vector,
    last_user_index,
    rewrite_messages,
)
from app.upstream.client import UpstreamClient
from app.upstream.response import UpstreamResponse
from app.upstream.stream_meter import StreamMeter, count_tokens


@dataclass(frozen=True)
class DryRun:
    """What would have gone upstream."""

    body: dict[str, Any]


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
class ChatOptions:
    default_model: str
    prompt_format: PromptFormat
    decimals: int
    max_images: int
    templates: ImageTemplates = field(default_factory=ImageTemplates)


class ChatService:
    """Orchestrates one chat completion through the proxy."""

    def __init__(
        self,
        options: ChatOptions,
        images: ImagePipeline,
        upstream: UpstreamClient,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._options = options
        self._images = images
        self._upstream = upstream
        self._metrics = metrics or Metrics()
        # Set once the text tower has encoded the vocabulary, when labels are on.
        self.labeler: Labeler | None = None

    async def complete(
        self,
        request: ChatCompletionRequest,
        uploads: Sequence[ImageSource] = (),
        *,
        dry_run: bool = False,
    ) -> ChatOutcome:
        body = request.upstream_body()
        messages: list[Message] = body["messages"]
        attach_uploads(messages, len(uploads))
        sources = collect_image_sources(messages, uploads)
        if len(sources) > self._options.max_images:
            raise TooManyImages(
                f"{len(sources)} images in one request; the limit is {self._options.max_images}",
                param="messages",
            )
        images = await self._encode_all(sources)
        body["messages"] = rewrite_messages(
            messages, images, self._options.prompt_format, self._options.templates
        )
        body["model"] = body.get("model") or self._options.default_model
        if dry_run:
            return DryRun(body)
        stream = bool(body.get("stream"))
        sent_at = time.perf_counter()
        reply = await self._send_upstream(orjson.dumps(body), stream)
        headers_at = time.perf_counter()
        if stream:
            meter = StreamMeter(self._metrics, sent_at=sent_at, headers_at=headers_at)
            return StreamReply(reply.relay(meter), reply.media_type, reply.aclose)
        answer = await reply.read()
        self._metrics.upstream_duration.labels(mode="json").observe(time.perf_counter() - sent_at)
        if b'"usage"' in answer:
            count_tokens(self._metrics, _usage_of(answer))
        return JsonReply(reply.status_code, answer, reply.media_type)

    async def _send_upstream(self, payload: bytes, stream: bool) -> UpstreamResponse:
        """Send the chat request and wait for the upstream's headers; observe that wait."""
        sent_at = time.perf_counter()
        try:
            reply = await self._upstream.open(
                "POST", "/chat/completions", body=payload, stream=stream
            )
        except UpstreamStatus as exc:
            self._metrics.upstream_responses.labels(code=str(exc.status_code)).inc()
            raise
        ttfb = time.perf_counter() - sent_at
        self._metrics.upstream_ttfb.observe(ttfb)
        self._metrics.upstream_responses.labels(code=str(reply.status_code)).inc()
        note_stage("upstream_ttfb", ttfb)
        return reply

    async def _encode_all(self, sources: dict[Location, ImageSource]) -> dict[Location, ImageFacts]:
        if not sources:
            return {}
        started = time.perf_counter()
        results: dict[Location, ImageEmbedding] = {}

        async def encode_one(location: Location, source: ImageSource) -> None:
            results[location] = await self._images.embed(source)

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
        for embedding in results.values():
            if embedding.sha256 not in facts_by_sha:
                facts_by_sha[embedding.sha256] = self._facts(embedding)
        return {location: facts_by_sha[image.sha256] for location, image in results.items()}

    def _facts(self, embedding: ImageEmbedding) -> ImageFacts:
        return ImageFacts(
            vector=format_vector(embedding.vector, self._options.decimals),
            sha256=embedding.sha256,
            width=embedding.width,
            height=embedding.height,
            labels=self.labeler.describe(embedding.vector) if self.labeler else "",
        )


def _usage_of(answer: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


UPLOAD_URL = "upload:"


def attach_uploads(messages: list[Message], count: int) -> None:
    """Put `count` uploaded-image parts at the end of the last user message, after its text."""
    if count == 0:
        return
    placeholders = [
        {"type": "image_url", "image_url": {"url": f"{UPLOAD_URL}{index}"}}
        for index in range(count)
    ]
    index = last_user_index(messages)
    if index < 0:
        messages.append({"role": "user", "content": placeholders})
        return
    content = messages[index].get("content")
    if isinstance(content, list):
        parts = content
    elif content:
        parts = [{"type": "text", "text": content}]
    else:
        parts = []
    messages[index]["content"] = parts + placeholders


def collect_image_sources(
    messages: list[Message], uploads: Sequence[ImageSource]
) -> dict[Location, ImageSource]:
    sources: dict[Location, ImageSource] = {}
    for message_index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            if part.get("type") != "image_url":
                continue
            url: str = part["image_url"]["url"]
            location = (message_index, part_index)
            if url.startswith(UPLOAD_URL) and url[len(UPLOAD_URL) :].isdigit():
                upload_index = int(url[len(UPLOAD_URL) :])
                if upload_index < len(uploads):
                    sources[location] = uploads[upload_index]
                    continue
            param = f"messages[{message_index}].content[{part_index}].image_url"
            sources[location] = ImageSource.from_url(url, param)
    return sources
