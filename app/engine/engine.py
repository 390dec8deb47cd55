"""The engine: every model the proxy runs, behind one object.

It owns the image and text pipelines, the content-addressed cache in front of them, the
zero-shot labeler, the encoder pool and the GPU readings. Services ask it for vectors and
descriptions and never see a model, a pool or a cache:

    engine = Engine.from_settings(settings, metrics, fetcher)
    await engine.start()                               # load, warm; `ready` turns True
    image = await engine.embed_image(source)           # ImageEmbedding: vector, sha256, size
    described = await engine.describe(source)          # the same, with the image's labels
    vectors, tokens = await engine.embed_texts(["a photo of a dog"])
    await engine.aclose()

Until a model is loaded, a call that needs it raises `EngineNotReady` (503 + Retry-After),
the one "not ready" answer of every part of the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import Settings
from app.engine import clip
from app.engine.cache import EmbeddingCache, ImageEmbedding, build_backends, namespace_of
from app.engine.image_pipeline import ImagePipeline
from app.engine.labels import Labeler, label_prompts, read_vocabulary
from app.engine.pool import BatchReport, EncoderPool, PoolEvents
from app.engine.preprocess import PREPROCESS_VERSION
from app.engine.text import ClipTextEncoder, load_logit_scale, model_identity
from app.engine.text_pipeline import TextPipeline, Vectors
from app.ingest import ImageLimits, ImageSource
from app.metrics import MemoryReading, Metrics
from app.safe_fetch import SafeFetcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDescription:
    """One image as the prompt may show it: its embedding and the words found for it."""

    embedding: ImageEmbedding
    labels: str = ""


class Engine:
    """The models behind the proxy; `ready` once every one the settings ask for is warm."""

    def __init__(
        self,
        settings: Settings,
        images: ImagePipeline,
        texts: TextPipeline,
        cache: EmbeddingCache,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._images = images
        self._texts = texts
        self._cache = cache
        self._metrics = metrics
        self._labeler: Labeler | None = None
        metrics.encoder_queue_depth.set_function(lambda: images.queue_depth)
        metrics.encoder_workers_ready.set_function(lambda: images.workers_ready)

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
        return cls(settings, images, TextPipeline(), cache, metrics)

    @staticmethod
    def gpu_memory() -> MemoryReading:
        """VRAM of every device this process uses (the driver's and torch's view), read at
        scrape time; the one place the proxy reads GPU memory."""
        return clip.gpu_memory()

    @property
    def ready(self) -> bool:
        """Every encoder worker loaded and warm (labels, when on, computed before that)."""
        return self._images.ready

    @property
    def devices(self) -> list[str]:
        return self._images.devices

    @property
    def cache_backends(self) -> list[str]:
        return self._cache.backends

    async def start(self) -> None:
        """Load one model copy per device off the event loop; the pool warms each worker.

        Any failure is logged and leaves the engine not ready (and /readyz at 503): this
        runs as a background task, whose exception would otherwise surface only as "Task
        exception was never retrieved".
        """
        settings = self._settings
        try:
            encoders = await asyncio.to_thread(
                clip.load_encoders,
                settings.clip_model,
                settings.device,
                settings.encoder_dtype.value,
                quantize=settings.encoder_quantize.value,
                compile=settings.encoder_compile,
                warm_batch=settings.max_batch,
            )
            if not await self._start_text_side(encoders[0]):
                return
        except Exception:
            logger.exception("could not load the CLIP encoder; /readyz stays 503")
            return
        pool = EncoderPool(
            encoders,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.encoder_queue_size,
            job_timeout_s=settings.encode_timeout_s,
            events=MetricsPoolEvents(self._metrics),
        )
        pool.start()
        self.attach_pool(pool)
        logger.info("encoder loaded; warming up", extra={"devices": pool.devices})

    def attach_pool(self, pool: EncoderPool) -> None:
        """Serve images from `pool` (started); the one it replaces is stopped. Tests and
        benchmarks hand in pools of their own."""
        self._images.attach(pool)

    async def aclose(self) -> None:
        # Stopping the pool joins its worker threads (a CPU batch may take seconds): off
        # the event loop, so streams still draining keep flowing.
        await asyncio.to_thread(self._images.close)
        self._texts.close()
        await self._cache.aclose()

    async def embed_image(self, source: ImageSource) -> ImageEmbedding:
        """The image's unit vector, SHA-256 and size; from the cache when it holds them."""
        return await self._images.embed(source)

    async def embed_texts(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """CLIP text vectors, (n, dim), in the image vectors' space, and each text's tokens."""
        return await self._texts.vectors(texts)

    async def describe(self, source: ImageSource) -> ImageDescription:
        """The image's embedding and its labels (when labels are on)."""
        embedding = await self._images.embed(source)
        labels = self._labeler.describe(embedding.vector) if self._labeler else ""
        return ImageDescription(embedding=embedding, labels=labels)

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
        self._texts.attach(text)
        return True


def build_labeler(settings: Settings, text: ClipTextEncoder) -> Labeler:
    """Every label's text vector, computed once at start."""
    path = Path(settings.labels_vocabulary) if settings.labels_vocabulary else None
    labels = read_vocabulary(path)
    prompts = label_prompts(labels, settings.labels_prompt)
    batches = range(0, len(prompts), 256)
    vectors = [text.encode(prompts[start : start + 256])[0] for start in batches]
    return Labeler(
        labels=labels,
        vectors=np.concatenate(vectors),
        logit_scale=load_logit_scale(settings.clip_model),
        top_k=settings.labels_top_k,
    )


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
