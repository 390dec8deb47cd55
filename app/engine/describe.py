"""The words about an image beside its vector: labels, tags, the text in it (OCR) and a
caption, each cached by the image's content (memory, then Redis) so replicas and later
turns reuse them. The engine (`engine.py`) owns one and hands it the labeler once the
text tower has computed it.

    words = ImageWords(images, metrics, options, ocr=ocr_pool, captions=caption_pool, ...)
    described = await words.describe(image, words=True)   # ImageDescription

On a miss the bytes are decoded once for every consumer (`shared_decode.py`): CLIP reduces
the full picture that OCR and the captioner read.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.engine.cache import ImageEmbedding, WordsCache
from app.engine.cache_backends import RedisBackend
from app.engine.engine_events import watch
from app.engine.failure_memory import FailureMemory
from app.engine.image_pipeline import ImageBytes, ImagePipeline, own_param
from app.engine.labels import Labeler, ensemble, label_prompts, read_vocabulary
from app.engine.text import ClipTextEncoder
from app.engine.workers import WorkerPool
from app.errors import EngineTimeout, ProxyError
from app.metrics import Metrics
from app.observability.request_context import note_stage

# The text shown for an image OCR gave up on recently (the prompt says it was not read).
OCR_NOT_READ = "[not read: OCR gave up on this image's text; it is not retried for a while]"


class _Remembered(Exception):
    """OCR passed its deadline on this image recently (here or on another replica)."""


@dataclass(frozen=True)
class ImageDescription:
    """One image as the prompt may show it: its embedding and the words found for it."""

    embedding: ImageEmbedding
    labels: str = ""  # the {labels} of the seed templates (LABELS_TOP_K)
    tags: str = ""  # the describe preset's tags (DESCRIBE_TAGS_*)
    ocr: str | None = None  # the text in the image, in reading order; None: no OCR ran
    caption: str = ""


@dataclass(frozen=True)
class WordsOptions:
    """The settings the words follow (read from Settings by the engine)."""

    labels_top_k: int
    tags_top_k: int
    tags_min_score: float
    ocr_failure_ttl_s: float


class ImageWords:
    """Labels, tags, OCR text and captions for images, cached by their content."""

    def __init__(
        self,
        images: ImagePipeline,
        metrics: Metrics,
        options: WordsOptions,
        *,
        ocr_cache: WordsCache,
        caption_cache: WordsCache,
        failures_shared: RedisBackend | None = None,
        ocr: WorkerPool[ImageBytes, str] | None = None,
        captions: WorkerPool[ImageBytes, str] | None = None,
    ) -> None:
        self._images = images
        self._metrics = metrics
        self._options = options
        self.ocr_cache = ocr_cache
        self.caption_cache = caption_cache
        self.ocr = ocr
        self.captions = captions
        self.labeler: Labeler | None = None  # set by the engine once computed
        # Images whose OCR passed its deadline: not read again for a while; in Redis too
        # when the caches have one, so another replica does not read it again either.
        self._ocr_failures = FailureMemory(options.ocr_failure_ttl_s, shared=failures_shared)

    def attach_ocr_pool(self, pool: WorkerPool[ImageBytes, str]) -> None:
        """Read text with `pool` (started); the one it replaces is stopped (tests)."""
        old, self.ocr = self.ocr, pool
        watch(self._metrics, pool)
        if old is not None and old is not pool:
            old.stop()

    async def describe(self, image: ImageBytes, *, words: bool = False) -> ImageDescription:
        """The image's embedding and its labels; with `words`, also its tags, OCR text and
        caption, each when it is on."""
        if not words:
            embedding = await self._images.embed_bytes(image)
            return ImageDescription(embedding=embedding, labels=self._labels(embedding))
        # OCR or captions on: one decode for them and CLIP (unless the caller shares one).
        owned = image.shared is None and (self.ocr is not None or self.captions is not None)
        if owned:
            image = image.sharing(self._images.decode)
        try:
            async with asyncio.TaskGroup() as group:
                vector = group.create_task(self._images.embed_bytes(image))
                ocr = group.create_task(self._read_text(image))
                caption = group.create_task(self._words(self.captions, self.caption_cache, image))
        finally:
            if owned and image.shared is not None:
                image.shared.release()  # the request is done with the pixels
        embedding = vector.result()
        options = self._options
        tags = ""
        if self.labeler is not None and options.tags_top_k > 0:
            tags = self.labeler.describe(
                embedding.vector, options.tags_top_k, options.tags_min_score
            )
        return ImageDescription(
            embedding=embedding,
            labels=self._labels(embedding),
            tags=tags,
            ocr=ocr.result() if self.ocr is not None else None,
            caption=caption.result(),
        )

    async def read_page_image(self, data: bytes, param: str) -> str | None:
        """The text in a rendered document page (PNG bytes) by the OCR pool, cached by its
        content like an image's; None when OCR is off."""
        if self.ocr is None:
            return None
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        return await self._words(self.ocr, self.ocr_cache, ImageBytes(data, sha256, param))

    async def _read_text(self, image: ImageBytes) -> str:
        """The image's OCR text; for an image whose reading passed its deadline within
        OCR_FAILURE_TTL_S, `OCR_NOT_READ` at once instead of reading it again."""
        if self.ocr is None:
            return ""
        key = self.ocr_cache.key(image.sha256)  # the tenant's own, like the cache entry
        pool = self.ocr

        async def read_unless_remembered() -> str:
            # Asked on a cache miss only: a hit (every later turn) costs no failure lookup,
            # which with Redis is a round trip.
            if await self._ocr_failures.recalls(key):
                raise _Remembered
            return await pool.run(image)

        try:
            return await self._words(pool, self.ocr_cache, image, read_unless_remembered)
        except _Remembered:
            self._metrics.words_errors.labels(kind="ocr", reason="remembered").inc()
            return OCR_NOT_READ
        except EngineTimeout:
            await self._ocr_failures.remember(key)
            raise

    def _labels(self, embedding: ImageEmbedding) -> str:
        if self.labeler is None or self._options.labels_top_k == 0:
            return ""
        return self.labeler.describe(embedding.vector)

    async def _words(
        self,
        pool: WorkerPool[ImageBytes, str] | None,
        cache: WordsCache,
        image: ImageBytes,
        compute: Callable[[], Awaitable[str]] | None = None,
    ) -> str:
        """The pool's words for `image` from `cache`, else `compute()`'s (the pool's run)."""
        if pool is None:
            return ""
        started = time.perf_counter()
        try:
            return await cache.get_or_compute(image.sha256, compute or (lambda: pool.run(image)))
        except ProxyError as exc:
            own = own_param(exc, image.param)
            if own is exc:
                raise
            raise own from exc
        finally:
            note_stage(pool.kind, time.perf_counter() - started)


def build_labeler(
    text: ClipTextEncoder,
    *,
    vocabulary: Path | None,
    prompt: str,
    logit_scale: float,
    top_k: int,
    min_score: float,
) -> Labeler:
    """Every label's text vector, computed once at start (`prompt`: templates split by |)."""
    labels = read_vocabulary(vocabulary)
    per_template = []
    for template in prompt.split("|"):
        prompts = label_prompts(labels, template)
        batches = range(0, len(prompts), 256)
        vectors = [text.encode(prompts[start : start + 256])[0] for start in batches]
        per_template.append(np.concatenate(vectors))
    return Labeler(
        labels=labels,
        vectors=ensemble(per_template),
        logit_scale=logit_scale,
        top_k=top_k,
        min_score=min_score,
    )
