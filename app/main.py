"""The application factory: `create_app(settings)` wires every component for one process.

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

The lifespan opens the shared HTTP clients and starts loading the encoder in the
background: the server answers `/healthz` at once and `/readyz` turns 200 once every
encoder worker is loaded and warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api import chat, embeddings, health, models
from app.api.admission import Admission, AdmissionMiddleware
from app.api.auth import ClientAuthMiddleware, load_client_keys
from app.api.body_limit import BodyLimitMiddleware
from app.api.deps import AppState
from app.api.observe import RequestObserver
from app.api.responses import error_response
from app.cache import EmbeddingCache, build_backends, namespace_of
from app.config import Settings
from app.embeddings_service import EmbeddingsOptions, EmbeddingsService
from app.encoder.clip import ClipImageEncoder, gpu_memory, load_encoders
from app.encoder.pool import BatchReport, EncoderPool, PoolEvents
from app.encoder.preprocess import PREPROCESS_VERSION
from app.encoder.text import ClipTextEncoder, load_logit_scale, model_identity
from app.errors import ProxyError, error_body
from app.image_pipeline import ImagePipeline
from app.ingest import ImageLimits
from app.labels import Labeler, label_prompts, read_vocabulary
from app.metrics import Metrics
from app.request_context import note_error
from app.safe_fetch import FetchPolicy, SafeFetcher
from app.service import ChatOptions, ChatService
from app.text_pipeline import TextPipeline
from app.upstream.client import RetryPolicy, UpstreamClient
from app.upstream.rate_limit import RateLimiter
from app.upstream.session import TlsOptions

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(gpu_memory=gpu_memory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        refuse_worker_processes()
        state = build_state(settings, metrics)
        app.state.clip_proxy = state
        refused = state.metrics.requests_refused
        app.state.admission.on_refused = lambda reason: refused.labels(reason=reason).inc()
        loader = asyncio.create_task(start_encoders(settings, state))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            # Stopping the pool joins its worker threads (a CPU batch may take seconds):
            # off the event loop, so streams still draining keep flowing.
            await asyncio.to_thread(state.images.close)
            state.texts.close()
            await state.cache.aclose()
            await state.upstream.aclose()
            await state.fetcher.aclose()

    app = FastAPI(title="clip-proxy", version="0.1.0", lifespan=lifespan)
    app.include_router(chat.router)
    app.include_router(embeddings.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Reliability and auth (outermost last): auth, then shedding/draining, then body limit.
    # `app.state.admission` exists before the lifespan runs: the CLI's SIGTERM handler and
    # /readyz read its draining flag.
    app.state.admission = Admission(settings.max_in_flight)
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission)
    app.add_middleware(
        ClientAuthMiddleware,
        keys=load_client_keys(settings.api_keys, settings.api_keys_file),
        protect_metrics=settings.metrics_require_auth,
    )
    # Added last, so it runs first: the request id is bound before anything else runs.
    app.add_middleware(RequestObserver, metrics=metrics)
    install_error_handlers(app)
    return app


def refuse_worker_processes() -> None:
    """One process per container, by design; refuse to start as one of several workers.

    The encoder owns the GPU: every worker would load its own copy of CLIP, split the
    batches (smaller batches, lower throughput) and keep its own queue and metrics, so a
    scrape would see one worker's numbers. `clip-proxy serve` runs one worker; scale out with
    replicas behind the load balancer instead. uvicorn's `--workers` and `--reload` start
    the app in multiprocessing children, which is what this detects.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR is set, but clip-proxy runs one process per container "
            "and keeps its metrics in memory; unset it and scale with replicas"
        )
    if multiprocessing.parent_process() is not None:
        raise RuntimeError(
            "clip-proxy runs one worker per container (the encoder owns the GPU); start it "
            "with `clip-proxy serve`, not several uvicorn workers, and scale with replicas"
        )


def build_state(settings: Settings, metrics: Metrics | None = None) -> AppState:
    metrics = metrics or Metrics(gpu_memory=gpu_memory)
    fetcher = SafeFetcher(
        FetchPolicy(
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=frozenset(settings.fetch_allow_hosts),
            allow_networks=tuple(settings.fetch_allow_networks),
            proxy=settings.fetch_proxy,
        )
    )
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
    texts = TextPipeline()
    upstream = UpstreamClient(
        settings.upstream_base_url,
        settings.upstream_api_key.get_secret_value(),
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
        keepalive_expiry_s=settings.upstream_keepalive_expiry_s,
        max_body_bytes=settings.upstream_max_body_bytes,
        tls=TlsOptions(
            ca_file=settings.upstream_ca_file,
            client_cert=settings.upstream_client_cert,
            client_key=settings.upstream_client_key,
        ),
        proxy=settings.upstream_proxy,
        retry=RetryPolicy(
            settings.upstream_max_retries,
            settings.upstream_retry_base_s,
            settings.upstream_retry_max_s,
        ),
        rate_limiter=(
            RateLimiter(settings.upstream_rate_limit_rps, settings.upstream_rate_limit_wait_s)
            if settings.upstream_rate_limit_rps
            else None
        ),
        on_retry=lambda reason: metrics.upstream_retries.labels(reason=reason).inc(),
    )
    options = ChatOptions(
        default_model=settings.default_model,
        prompt_format=settings.prompt_format,
        decimals=settings.embedding_decimals,
        max_images=settings.max_images_per_request,
        templates=settings.templates(),
    )
    embeddings_options = EmbeddingsOptions(
        model_name=settings.clip_model,
        max_inputs=2048,
        max_images=settings.max_images_per_request,
    )
    return AppState(
        settings=settings,
        metrics=metrics,
        images=images,
        fetcher=fetcher,
        upstream=upstream,
        chat=ChatService(options, images, upstream, metrics=metrics),
        cache=cache,
        texts=texts,
        embeddings=EmbeddingsService(embeddings_options, images, texts),
    )


async def start_encoders(settings: Settings, state: AppState) -> None:
    """Load one model copy per device off the event loop; the pool warms each worker.

    `/readyz` turns 200 once every worker is warm (the pool's `ready`). Any failure on the
    way is logged and leaves `/readyz` at 503: this runs as a background task, whose
    exception would otherwise surface only as "Task exception was never retrieved".
    """
    try:
        encoders = await asyncio.to_thread(
            load_encoders,
            settings.clip_model,
            settings.device,
            settings.encoder_dtype.value,
            quantize=settings.encoder_quantize.value,
            compile=settings.encoder_compile,
            warm_batch=settings.max_batch,
        )
        if not await start_text_side(settings, state, encoders[0]):
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
        events=MetricsPoolEvents(state.metrics),
    )
    state.metrics.encoder_queue_depth.set_function(lambda: pool.queue_depth)
    state.metrics.encoder_workers_ready.set_function(lambda: pool.workers_ready)
    pool.start()
    state.images.attach(pool)
    logger.info("encoder loaded; warming up", extra={"devices": pool.devices})
    freeze_startup_objects()


def freeze_startup_objects() -> None:
    """Take everything built at start (torch, transformers, the model, the app) out of the
    garbage collector's reach.

    Those are some 400,000 long-lived objects, and a full collection walks all of them:
    about 175 ms on this machine, during which no stream is relayed (measured with
    bench/profile_proxy.py; it showed as ms-long gaps between chunks). Frozen, a full
    collection walks only what requests created since; reference counting still frees
    the frozen objects that are dropped.
    """
    gc.collect()  # what is already garbage goes now, not into the frozen set
    gc.freeze()


class MetricsPoolEvents(PoolEvents):
    """The encoder pool's events as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def batch(self, report: BatchReport) -> None:
        observe_batch(self._metrics, report)

    def dropped(self, count: int) -> None:
        self._metrics.encoder_dropped.inc(count)

    def cpu_fallback(self, device: str) -> None:
        self._metrics.encoder_cpu_fallbacks.labels(device=device).inc()

    def worker_restarted(self, device: str) -> None:
        self._metrics.encoder_worker_restarts.labels(device=device).inc()


async def start_text_side(settings: Settings, state: AppState, vision: ClipImageEncoder) -> bool:
    """Name the cache's namespace, load the text tower, and encode the label vocabulary.
    False when the process must not open (labels are on but cannot be computed)."""
    identity = await asyncio.to_thread(model_identity, settings.clip_model)
    state.cache.bind(namespace_of(identity, PREPROCESS_VERSION, str(vision.dtype)))
    try:
        text = await asyncio.to_thread(
            ClipTextEncoder.load, settings.clip_model, vision.name, settings.encoder_dtype.value
        )
    except Exception:
        if settings.labels_top_k > 0:
            logger.exception("labels are on but the CLIP text tower did not load; not ready")
            return False
        logger.exception("no CLIP text tower: /v1/embeddings takes images only")
        state.texts.disable("this proxy's CLIP checkpoint has no text tower: send images only")
        return True
    if settings.labels_top_k > 0:
        # Before `attach`: the text tower serves one caller at a time (ClipTextEncoder).
        state.chat.labeler = await asyncio.to_thread(build_labeler, settings, text)
    state.texts.attach(text)
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


def observe_batch(metrics: Metrics, report: BatchReport) -> None:
    metrics.batch_size.observe(report.size)
    metrics.encode_duration.labels(device=report.device).observe(report.encode_s)
    for wait in report.queue_wait_s:
        metrics.encode_queue.observe(wait)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        note_error("invalid_request")
        return JSONResponse(
            error_body(str(exc.errors()[0].get("msg")), "invalid_request_error"), 400
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        note_error(error_type)
        return JSONResponse(
            error_body(str(exc.detail), error_type), exc.status_code, headers=exc.headers
        )

    # Any other exception is a bug: RequestObserver (app/api/observe.py) logs it with its
    # request id and answers 500 in the same shape.
