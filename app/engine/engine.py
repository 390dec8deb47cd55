"""The engine: every model the proxy runs, behind one object.

It owns the image and text pipelines, the content-addressed cache in front of them, the
zero-shot labeler, the CLIP pool, the OCR and caption pools beside it (with their own
caches) and the GPU readings. Services ask it for vectors and descriptions and never see a
model, a pool or a cache:

    engine = Engine.from_settings(settings, metrics, fetcher)
    await engine.start()                               # load, warm; `ready` turns True
    image = await engine.embed_image(source)           # ImageEmbedding: vector, sha256, size
    described = await engine.describe(source)          # the same, with the image's labels
    described = await engine.describe(source, words=True)   # + tags, OCR text, caption
    vectors, tokens = await engine.embed_texts(["a photo of a dog"])
    await engine.aclose()

The words are computed beside the vector, concurrently, each cached by the image's content
(memory, then Redis) so replicas and later turns reuse them.

Until a model is loaded, a call that needs it raises `EngineNotReady` (503 + Retry-After),
the one "not ready" answer of every part of the engine.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from app.config import Settings
from app.engine import clip
from app.engine.cache import EmbeddingCache, ImageEmbedding, WordsCache, namespace_of
from app.engine.cache_backends import build_backends
from app.engine.cache_scope import CacheScope
from app.engine.caption import Captioner
from app.engine.failure_memory import FailureMemory
from app.engine.gpu_decode import gpu_jpeg_decoder
from app.engine.image_pipeline import ImageBytes, ImagePipeline, own_param
from app.engine.labels import Labeler, ensemble, label_prompts, read_vocabulary
from app.engine.ocr import OcrModel, ocr_identity
from app.engine.pool import EncoderPool
from app.engine.pool_jobs import BatchReport, PoolEvents
from app.engine.preprocess import PREPROCESS_VERSION
from app.engine.source import ModelUnavailable, check_model_source, describe_load_failure
from app.engine.text import ClipTextEncoder, load_logit_scale, model_identity
from app.engine.text_pipeline import TextPipeline, Vectors
from app.engine.workers import WorkerEvents, WorkerPool
from app.errors import EngineTimeout, ProxyError
from app.ingest.fetch import SafeFetcher
from app.ingest.sources import ImageLimits, ImageSource
from app.metrics import MemoryReading, Metrics
from app.observability.request_context import note_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDescription:
    """One image as the prompt may show it: its embedding and the words found for it."""

    embedding: ImageEmbedding
    labels: str = ""  # the {labels} of the seed templates (LABELS_TOP_K)
    tags: str = ""  # the describe preset's tags (DESCRIBE_TAGS_*)
    ocr: str | None = None  # the text in the image, in reading order; None: no OCR ran
    caption: str = ""


class Engine:
    """The models behind the proxy; `ready` once every one the settings ask for is warm."""

    def __init__(
        self,
        settings: Settings,
        images: ImagePipeline,
        texts: TextPipeline,
        cache: EmbeddingCache,
        metrics: Metrics,
        *,
        ocr: WorkerPool[ImageBytes, str] | None = None,
        captions: WorkerPool[ImageBytes, str] | None = None,
    ) -> None:
        self._settings = settings
        self._images = images
        self._texts = texts
        self._cache = cache
        self._metrics = metrics
        self._labeler: Labeler | None = None
        self._dtype = ""
        self._ocr = ocr
        self._captions = captions
        self._ocr_cache = WordsCache(
            cache.backend_list, metrics, kind="ocr", prefix=settings.cache_key_prefix
        )
        self._ocr_cache.bind(namespace_of(ocr_identity(settings.ocr_layout), 1, "ocr"))
        self._caption_cache = WordsCache(
            cache.backend_list, metrics, kind="caption", prefix=settings.cache_key_prefix
        )
        self._caption_cache.bind(namespace_of(f"{settings.caption_model}", 1, "caption"))
        # Pages of documents (app/documents), by the file's SHA-256 and the page number.
        self.document_pages = WordsCache(
            cache.backend_list, metrics, kind="document", prefix=settings.cache_key_prefix
        )
        self.document_pages.bind(namespace_of(document_identity(settings), 1, "document"))
        # Each tenant its own entries when client keys are set (cache_scope.py).
        self._scope = CacheScope.from_setting(
            settings.cache_scope, keys_set=bool(settings.client_keys)
        )
        for scoped in (cache, self._ocr_cache, self._caption_cache, self.document_pages):
            scoped.scope = self._scope
        # Images whose OCR passed its deadline: not read again for a while.
        self._ocr_failures = FailureMemory(settings.ocr_failure_ttl_s)
        metrics.encoder_queue_depth.set_function(lambda: images.queue_depth)
        metrics.encoder_workers_ready.set_function(lambda: images.workers_ready)
        for pool in (ocr, captions):
            if pool is not None:
                _watch(metrics, pool)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics, fetcher: SafeFetcher) -> Engine:
        """Everything built, nothing loaded: `start()` loads the models."""
        cache = EmbeddingCache(
            build_backends(
                settings.cache_memory_bytes,
                settings.cache_url,
                ttl_s=settings.cache_ttl_s,
                timeout_s=settings.cache_timeout_ms / 1000,
            ),
            metrics,
            prefix=settings.cache_key_prefix,
        )
        images = ImagePipeline(
            ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
            fetcher,
            cache=cache,
            preprocess_threads=settings.preprocess_threads,
            metrics=metrics,
        )
        ocr = captions = None
        if settings.ocr_enabled:
            ocr = WorkerPool(
                "ocr",
                functools.partial(
                    OcrModel.load,
                    threads=settings.ocr_threads,
                    decode=images.decode,
                    use_cuda=settings.ocr_device == "cuda",
                    max_boxes=settings.ocr_max_boxes,
                    layout=settings.ocr_layout,
                ),
                workers=settings.ocr_workers,
                max_queue=settings.ocr_queue_size,
                timeout_s=settings.ocr_timeout_s,
                events=MetricsWorkerEvents(metrics, "ocr"),
            )
        if settings.caption_model:
            captions = WorkerPool(
                "caption",
                functools.partial(
                    Captioner.load,
                    settings.caption_model,
                    caption_device(settings.caption_device),
                    images.decode,
                ),
                max_batch=settings.caption_max_batch,
                max_queue=settings.caption_queue_size,
                timeout_s=settings.caption_timeout_s,
                events=MetricsWorkerEvents(metrics, "caption"),
            )
        return cls(settings, images, TextPipeline(), cache, metrics, ocr=ocr, captions=captions)

    @staticmethod
    def gpu_memory() -> MemoryReading:
        """VRAM of every device this process uses (the driver's and torch's view), read at
        scrape time; the one place the proxy reads GPU memory."""
        return clip.gpu_memory()

    @property
    def ready(self) -> bool:
        """Every encoder worker loaded and warm (labels, when on, computed before that), and
        the OCR and caption workers too when they are on."""
        return self._images.ready and all(
            pool.ready for pool in (self._ocr, self._captions) if pool is not None
        )

    @property
    def devices(self) -> list[str]:
        return self._images.devices

    @property
    def dim(self) -> int | None:
        """The image vector's width (the model's projection dim); None until loaded."""
        return self._images.dim

    @property
    def cache_backends(self) -> list[str]:
        return self._cache.backends

    def words_cache(self, kind: str, identity: str) -> WordsCache:
        """A cache of other words about images (a describer's), beside the vectors in the
        engine's backends; `identity` names what makes them (the describer models)."""
        cache = WordsCache(
            self._cache.backend_list,
            self._metrics,
            kind=kind,
            prefix=self._settings.cache_key_prefix,
        )
        cache.bind(namespace_of(identity, 1, kind))
        cache.scope = self._scope  # a description is the tenant's own, like the image's words
        return cache

    async def start(self) -> str | None:
        """Load one model copy per device off the event loop; the pool warms each worker.

        Returns None once loading is under way (`wait_ready` waits for the warm-up), or the
        one message that says why the engine cannot serve: a model that does not load names
        CLIP_PROXY_CLIP_MODEL and the ways out. Nothing is raised: this runs as a background
        task, whose exception would otherwise surface only as "Task exception was never
        retrieved"; the engine stays not ready (and /readyz at 503).
        """
        settings = self._settings
        if self._ocr is not None:
            self._ocr.start()  # each worker loads its model in its own thread, meanwhile
        try:
            await asyncio.to_thread(check_model_source, settings.clip_model)
            encoders = await asyncio.to_thread(
                clip.load_encoders,
                settings.clip_model,
                settings.device,
                settings.encoder_dtype.value,
                quantize=settings.encoder_quantize.value,
                compile=settings.encoder_compile,
                cuda_graphs=settings.encoder_cuda_graphs,
                warm_batch=settings.max_batch,
            )
        except Exception as exc:
            reason = str(exc)
            if not isinstance(exc, ModelUnavailable):
                reason = f"{type(exc).__name__}: {exc}"
            message = describe_load_failure(settings.clip_model, reason)
            logger.debug("the model's load failure in full", exc_info=True)
            logger.error(message)
            return message
        try:
            text_side_ok = await self._start_text_side(encoders[0])
        except Exception:
            # Not the model: the label vocabulary, the cache namespace. The cause, as raised.
            logger.exception("start-up failed; /readyz stays 503")
            text_side_ok = False
        if not text_side_ok:
            return "start-up failed"
        self._dtype = str(encoders[0].dtype).removeprefix("torch.")
        pool = EncoderPool(
            encoders,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.encoder_queue_size,
            job_timeout_s=settings.encode_timeout_s,
            events=MetricsPoolEvents(self._metrics),
            pipeline=None if settings.encoder_pipeline else False,
        )
        pool.start()
        if settings.gpu_decode:
            self._images.use_device_decoder(gpu_jpeg_decoder(encoders[0].name, encoders[0].spec))
        self.attach_pool(pool)
        logger.info("encoder loaded; warming up", extra={"devices": pool.devices})
        if self._captions is not None:
            # After CLIP, not beside it: transformers sets torch's default dtype while it
            # loads a model, and two loads at once in two threads mix their dtypes.
            self._captions.start()
        return None

    async def wait_ready(self) -> str | None:
        """Until every model the settings ask for is warm (after a successful `start`);
        the reason when one of them failed to load and never will be."""
        # The CLIP pool warms each worker in its own thread: one waiting thread, not a poll.
        while not await asyncio.to_thread(self._images.wait_ready, 1.0):
            pass
        for words in (self._ocr, self._captions):  # when on; usually warm long before
            while words is not None and not await asyncio.to_thread(words.wait_ready, 1.0):
                if words.load_failed:  # logged by the pool with its cause
                    return f"the {words.kind} model could not be loaded"
        return None

    @property
    def dtype(self) -> str:
        """The CLIP encoder's dtype once loaded (`float32`, `bfloat16`, ...); empty before."""
        return self._dtype

    def attach_pool(self, pool: EncoderPool) -> None:
        """Serve images from `pool` (started); the one it replaces is stopped. Tests and
        benchmarks hand in pools of their own."""
        self._images.attach(pool)

    async def aclose(self) -> None:
        # Stopping the pool joins its worker threads (a CPU batch may take seconds): off
        # the event loop, so streams still draining keep flowing.
        await asyncio.to_thread(self._images.close)
        for words in (self._ocr, self._captions):
            if words is not None:
                await asyncio.to_thread(words.stop)
        self._texts.close()
        await self._ocr_cache.aclose()
        await self._caption_cache.aclose()
        await self.document_pages.aclose()
        await self._cache.aclose()

    async def embed_image(self, source: ImageSource) -> ImageEmbedding:
        """The image's unit vector, SHA-256 and size; from the cache when it holds them."""
        return await self._images.embed(source)

    async def embed_texts(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """CLIP text vectors, (n, dim), in the image vectors' space, and each text's tokens."""
        return await self._texts.vectors(texts)

    def attach_ocr_pool(self, pool: WorkerPool[ImageBytes, str]) -> None:
        """Read text with `pool` (started); the one it replaces is stopped (tests)."""
        old, self._ocr = self._ocr, pool
        _watch(self._metrics, pool)
        if old is not None and old is not pool:
            old.stop()

    async def describe(self, source: ImageSource, *, words: bool = False) -> ImageDescription:
        """The image's embedding and its labels (when labels are on); with `words`, also
        its tags, the text in it (OCR) and a caption, each when it is on."""
        return await self.describe_bytes(await self._images.read(source), words=words)

    async def read(self, source: ImageSource) -> ImageBytes:
        """The image's bytes and SHA-256 (fetched, uploaded or decoded from base64)."""
        return await self._images.read(source)

    async def describe_bytes(self, image: ImageBytes, *, words: bool = False) -> ImageDescription:
        """`describe` for bytes already read (`read`)."""
        if not words:
            embedding = await self._images.embed_bytes(image)
            return ImageDescription(embedding=embedding, labels=self._labels(embedding))
        async with asyncio.TaskGroup() as group:
            vector = group.create_task(self._images.embed_bytes(image))
            ocr = group.create_task(self._read_text(image))
            caption = group.create_task(self._words(self._captions, self._caption_cache, image))
        embedding = vector.result()
        settings = self._settings
        tags = ""
        if self._labeler is not None and settings.describe_tags_top_k > 0:
            tags = self._labeler.describe(
                embedding.vector, settings.describe_tags_top_k, settings.describe_tags_min_score
            )
        return ImageDescription(
            embedding=embedding,
            labels=self._labels(embedding),
            tags=tags,
            ocr=ocr.result() if self._ocr is not None else None,
            caption=caption.result(),
        )

    async def read_page_image(self, data: bytes, param: str) -> str | None:
        """The text in a rendered document page (PNG bytes) by the OCR pool, cached by its
        content like an image's; None when OCR is off."""
        if self._ocr is None:
            return None
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        return await self._words(self._ocr, self._ocr_cache, ImageBytes(data, sha256, param))

    async def _read_text(self, image: ImageBytes) -> str:
        """The image's OCR text; for an image whose reading passed its deadline within
        OCR_FAILURE_TTL_S, `OCR_NOT_READ` at once instead of reading it again."""
        if self._ocr is None:
            return ""
        key = self._ocr_cache.key(image.sha256)  # the tenant's own, like the cache entry
        if self._ocr_failures.recalls(key):
            self._metrics.words_errors.labels(kind="ocr", reason="remembered").inc()
            return OCR_NOT_READ
        try:
            return await self._words(self._ocr, self._ocr_cache, image)
        except EngineTimeout:
            self._ocr_failures.remember(key)
            raise

    def _labels(self, embedding: ImageEmbedding) -> str:
        if self._labeler is None or self._settings.labels_top_k == 0:
            return ""
        return self._labeler.describe(embedding.vector)

    async def _words(
        self, pool: WorkerPool[ImageBytes, str] | None, cache: WordsCache, image: ImageBytes
    ) -> str:
        if pool is None:
            return ""
        started = time.perf_counter()
        try:
            return await cache.get_or_compute(image.sha256, lambda: pool.run(image))
        except ProxyError as exc:
            own = own_param(exc, image.param)
            if own is exc:
                raise
            raise own from exc
        finally:
            note_stage(pool.kind, time.perf_counter() - started)

    async def _start_text_side(self, vision: clip.ClipImageEncoder) -> bool:
        """Name the cache's namespace, load the text tower, and encode the label vocabulary.
        False when the engine must not open (labels are on but cannot be computed)."""
        settings = self._settings
        identity = await asyncio.to_thread(model_identity, settings.clip_model)
        self._cache.bind(
            namespace_of(identity, PREPROCESS_VERSION, str(vision.dtype)), dim=vision.dim
        )
        try:
            text = await asyncio.to_thread(
                ClipTextEncoder.load, settings.clip_model, vision.name, settings.encoder_dtype.value
            )
        except Exception:
            if settings.labels_top_k > 0:
                logger.exception("labels are on but the CLIP text tower did not load; not ready")
                return False
            logger.exception("no CLIP text tower: /v1/embeddings takes images only")
            self._texts.disable("this proxy's CLIP checkpoint has no text tower: send images only")
            return True
        if settings.labels_top_k > 0:
            # Before `attach`: the text tower serves one caller at a time (ClipTextEncoder).
            self._labeler = await asyncio.to_thread(build_labeler, settings, text)
        elif settings.describe_tags_top_k > 0:
            try:
                self._labeler = await asyncio.to_thread(build_labeler, settings, text)
            except Exception:  # tags are a nicety of describe: without them it still works
                logger.exception("the describe preset's tags could not be computed; no tags")
        self._texts.attach(text)
        return True


# The text shown for an image OCR gave up on recently (the prompt says it was not read).
OCR_NOT_READ = "[not read: OCR gave up on this image's text; it is not retried for a while]"


def build_labeler(settings: Settings, text: ClipTextEncoder) -> Labeler:
    """Every label's text vector, computed once at start."""
    path = Path(settings.labels_vocabulary) if settings.labels_vocabulary else None
    labels = read_vocabulary(path)
    per_template = []
    for template in settings.labels_prompt.split("|"):
        prompts = label_prompts(labels, template)
        batches = range(0, len(prompts), 256)
        vectors = [text.encode(prompts[start : start + 256])[0] for start in batches]
        per_template.append(np.concatenate(vectors))
    return Labeler(
        labels=labels,
        vectors=ensemble(per_template),
        logit_scale=load_logit_scale(settings.clip_model),
        top_k=settings.labels_top_k,
        min_score=settings.labels_min_score,
    )


def document_identity(settings: Settings) -> str:
    """What decides a document page's words: PDFium's version, the rendering, the OCR."""
    ocr = ocr_identity(settings.ocr_layout) if settings.ocr_enabled else "no-ocr"
    return (
        f"pypdfium2@{metadata.version('pypdfium2')}|dpi={settings.document_render_dpi}"
        f"|px={settings.document_render_max_pixels}|{ocr}"
    )


def caption_device(setting: str) -> str:
    """`auto`: the first GPU if there is one, else the CPU."""
    if setting != "auto":
        return "cuda:0" if setting == "cuda" else setting
    devices = clip.resolve_devices(["auto"])
    return devices[0]


def _watch(metrics: Metrics, pool: WorkerPool[ImageBytes, str]) -> None:
    metrics.words_queue_depth.labels(kind=pool.kind).set_function(lambda: pool.queue_depth)
    metrics.words_jobs_active.labels(kind=pool.kind).set_function(lambda: pool.active_jobs)
    metrics.words_workers_ready.labels(kind=pool.kind).set_function(lambda: pool.workers_ready)


class MetricsWorkerEvents(WorkerEvents):
    """An OCR or caption pool's events as Prometheus metrics."""

    def __init__(self, metrics: Metrics, kind: str) -> None:
        self._metrics = metrics
        self._kind = kind
        self._duration = metrics.ocr_duration if kind == "ocr" else metrics.caption_duration
        for reason in ("failed", "timeout", "overloaded"):
            metrics.words_errors.labels(kind=kind, reason=reason)

    def ran(self, size: int, seconds: float, queue_wait_s: list[float]) -> None:
        self._duration.observe(seconds)
        for wait in queue_wait_s:
            self._metrics.words_queue_seconds.labels(kind=self._kind).observe(wait)

    def failed(self, reason: str) -> None:
        self._metrics.words_errors.labels(kind=self._kind, reason=reason).inc()


class MetricsPoolEvents(PoolEvents):
    """The encoder pool's events as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def batch(self, report: BatchReport) -> None:
        self._metrics.batch_size.observe(report.size)
        self._metrics.encode_duration.labels(device=report.device).observe(report.encode_s)
        for wait in report.queue_wait_s:
            self._metrics.encode_queue.observe(wait)

    def dropped(self, count: int) -> None:
        self._metrics.encoder_dropped.inc(count)

    def cpu_fallback(self, device: str) -> None:
        self._metrics.encoder_cpu_fallbacks.labels(device=device).inc()

    def worker_restarted(self, device: str) -> None:
        self._metrics.encoder_worker_restarts.labels(device=device).inc()
