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

The words (labels, tags, OCR, captions) are `describe.py`'s, computed beside the vector.

Until a model is loaded, a call that needs it raises `EngineNotReady` (503 + Retry-After),
the one "not ready" answer of every part of the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from app.config import Settings
from app.engine import clip
from app.engine.cache import EmbeddingCache, ImageEmbedding, WordsCache, namespace_of
from app.engine.cache_backends import RedisBackend, build_backends
from app.engine.cache_scope import CacheScope
from app.engine.describe import ImageDescription, ImageWords, WordsOptions, build_labeler
from app.engine.engine_events import MetricsPoolEvents, watch
from app.engine.gpu_decode import gpu_jpeg_decoder
from app.engine.image_pipeline import ImageBytes, ImagePipeline
from app.engine.labels import Labeler
from app.engine.ocr import ocr_identity
from app.engine.pool import EncoderPool
from app.engine.preprocess import PREPROCESS_VERSION
from app.engine.source import ModelUnavailable, check_model_source, describe_load_failure
from app.engine.text import ClipTextEncoder, load_logit_scale, model_identity
from app.engine.text_pipeline import TextPipeline, Vectors
from app.engine.words_pools import words_pools
from app.engine.workers import WorkerPool
from app.ingest.fetch import SafeFetcher
from app.ingest.sources import ImageLimits, ImageSource
from app.metrics import MemoryReading, Metrics

logger = logging.getLogger(__name__)


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
        self._dtype = ""
        ocr_cache, caption_cache = (
            WordsCache(cache.backend_list, metrics, kind=kind, prefix=settings.cache_key_prefix)
            for kind in ("ocr", "caption")
        )
        ocr_cache.bind(
            namespace_of(ocr_identity(settings.ocr_layout, settings.ocr_gate_side), 1, "ocr")
        )
        caption_cache.bind(namespace_of(f"{settings.caption_model}", 1, "caption"))
        self._words = ImageWords(
            images,
            metrics,
            WordsOptions(
                labels_top_k=settings.labels_top_k,
                tags_top_k=settings.describe_tags_top_k,
                tags_min_score=settings.describe_tags_min_score,
                ocr_failure_ttl_s=settings.ocr_failure_ttl_s,
            ),
            ocr_cache=ocr_cache,
            caption_cache=caption_cache,
            failures_shared=next(
                (b for b in cache.backend_list if isinstance(b, RedisBackend)), None
            ),
            ocr=ocr,
            captions=captions,
        )
        # Pages of documents (app/documents), by the file's SHA-256 and the page number.
        self.document_pages = WordsCache(
            cache.backend_list, metrics, kind="document", prefix=settings.cache_key_prefix
        )
        self.document_pages.bind(namespace_of(document_identity(settings), 1, "document"))
        # Each tenant its own entries when client keys are set (cache_scope.py).
        self._scope = CacheScope.from_setting(
            settings.cache_scope, keys_set=bool(settings.client_keys)
        )
        for scoped in (cache, ocr_cache, caption_cache, self.document_pages):
            scoped.scope = self._scope
        metrics.encoder_queue_depth.set_function(lambda: images.queue_depth)
        metrics.encoder_workers_ready.set_function(lambda: images.workers_ready)
        for pool in (ocr, captions):
            if pool is not None:
                watch(metrics, pool)

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
        ocr, captions = words_pools(settings, metrics, images.decode)
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
            pool.ready for pool in (self._words.ocr, self._words.captions) if pool is not None
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
        if self._words.ocr is not None:
            self._words.ocr.start()  # each worker loads its model in its own thread, meanwhile
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
        if self._words.captions is not None:
            # After CLIP, not beside it: transformers sets torch's default dtype while it
            # loads a model, and two loads at once in two threads mix their dtypes.
            self._words.captions.start()
        return None

    async def wait_ready(self) -> str | None:
        """Until every model the settings ask for is warm (after a successful `start`);
        the reason when one of them failed to load and never will be."""
        # The CLIP pool warms each worker in its own thread: one waiting thread, not a poll.
        while not await asyncio.to_thread(self._images.wait_ready, 1.0):
            pass
        for words in (self._words.ocr, self._words.captions):  # when on; usually warm long before
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
        for words in (self._words.ocr, self._words.captions):
            if words is not None:
                await asyncio.to_thread(words.stop)
        self._texts.close()
        await self._words.ocr_cache.aclose()
        await self._words.caption_cache.aclose()
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
        self._words.attach_ocr_pool(pool)

    async def describe(self, source: ImageSource, *, words: bool = False) -> ImageDescription:
        """The image's embedding and its labels (when labels are on); with `words`, also
        its tags, the text in it (OCR) and a caption, each when it is on."""
        return await self.describe_bytes(await self._images.read(source), words=words)

    async def read(self, source: ImageSource) -> ImageBytes:
        """The image's bytes and SHA-256 (fetched, uploaded or decoded from base64)."""
        return await self._images.read(source)

    async def describe_bytes(self, image: ImageBytes, *, words: bool = False) -> ImageDescription:
        """`describe` for bytes already read (`read`)."""
        return await self._words.describe(image, words=words)

    def share_decode(self, image: ImageBytes) -> ImageBytes:
        """`image` with one decode for all its consumers; the caller `shared.release()`s it."""
        return image.sharing(self._images.decode)

    async def read_page_image(self, data: bytes, param: str) -> str | None:
        """The text in a rendered document page (PNG bytes) by the OCR pool, cached by its
        content like an image's; None when OCR is off."""
        return await self._words.read_page_image(data, param)

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
            self._words.labeler = await asyncio.to_thread(labeler_of, settings, text)
        elif settings.describe_tags_top_k > 0:
            try:
                self._words.labeler = await asyncio.to_thread(labeler_of, settings, text)
            except Exception:  # tags are a nicety of describe: without them it still works
                logger.exception("the describe preset's tags could not be computed; no tags")
        self._texts.attach(text)
        return True


def labeler_of(settings: Settings, text: ClipTextEncoder) -> Labeler:
    return build_labeler(
        text,
        vocabulary=Path(settings.labels_vocabulary) if settings.labels_vocabulary else None,
        prompt=settings.labels_prompt,
        logit_scale=load_logit_scale(settings.clip_model),
        top_k=settings.labels_top_k,
        min_score=settings.labels_min_score,
    )


def document_identity(settings: Settings) -> str:
    """What decides a document page's words: PDFium's version, the rendering, the OCR."""
    ocr = (
        ocr_identity(settings.ocr_layout, settings.ocr_gate_side)
        if settings.ocr_enabled
        else "no-ocr"
    )
    return (
        f"pypdfium2@{metadata.version('pypdfium2')}|dpi={settings.document_render_dpi}"
        f"|px={settings.document_render_max_pixels}|{ocr}"
    )
