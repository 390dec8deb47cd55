"""The composition root: `create_app(settings)` wires every component for one process, and
`AppState` holds what it built. Routes see only the services (`app/api/deps.py`).

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

The lifespan opens the shared HTTP clients (and, with `UPSTREAM_BASE_URL=echo`, starts the
embedded echo upstream) and starts loading the encoder in the background: the server
answers `/healthz` at once and `/readyz` turns 200 once every encoder worker is loaded and
warm, when one `ready` line is logged. A model that cannot be loaded is logged as one
message with the ways out, and `app.state.startup.failure` holds it: `clip-proxy serve`
then exits non-zero, while an app under test stays up with `/readyz` at 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from fastapi import FastAPI

from app.api import chat, embeddings, health, models
from app.api.admission import Admission, AdmissionMiddleware
from app.api.auth import ClientAuthMiddleware, key_digests
from app.api.body_limit import BodyLimitMiddleware
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.api.json_response import JsonResponse
from app.api.observe import RequestObserver
from app.api.playground import playground_router
from app.cache import EmbeddingCache, build_backends, namespace_of
from app.config import Settings
from app.echo_upstream import EchoUpstream
from app.embeddings_service import EmbeddingsOptions, EmbeddingsService
from app.encoder.clip import ClipImageEncoder, gpu_memory, load_encoders
from app.encoder.pool import BatchReport, EncoderPool, PoolEvents
from app.encoder.preprocess import PREPROCESS_VERSION
from app.encoder.source import ModelUnavailable, check_model_source, describe_load_failure
from app.encoder.text import ClipTextEncoder, load_logit_scale, model_identity
from app.health_service import HealthService
from app.image_pipeline import ImagePipeline
from app.ingest import ImageLimits
from app.labels import Labeler, label_prompts, read_vocabulary
from app.lifecycle import Startup, freeze_startup_objects, refuse_worker_processes
from app.metrics import Metrics
from app.models_service import ModelsService
from app.rate_limit import RateLimiter
from app.safe_fetch import FetchPolicy, SafeFetcher
from app.service import ChatLimits, ChatOptions, ChatService
from app.text_pipeline import TextPipeline
from app.upstream import RetryPolicy, UpstreamClient

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """Everything one process built: the services the routes reach (`services`), and the
    components under them, kept here to start and close them in order."""

    settings: Settings
    metrics: Metrics
    images: ImagePipeline
    fetcher: SafeFetcher
    upstream: UpstreamClient
    cache: EmbeddingCache
    texts: TextPipeline
    services: Services


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(gpu_memory=gpu_memory)
    refused = metrics.requests_refused
    # Built before the lifespan runs: the CLI's SIGTERM handler begins draining on it.
    admission = Admission(
        settings.max_in_flight, on_refused=lambda reason: refused.labels(reason=reason).inc()
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        refuse_worker_processes()
        echo: EchoUpstream | None = None
        upstream_url = settings.upstream_base_url
        if settings.echo_upstream:
            echo = EchoUpstream(settings.default_model)
            upstream_url = await asyncio.to_thread(echo.start)
        state = build_state(
            settings, metrics, draining=lambda: admission.draining, upstream_url=upstream_url
        )
        app.state.clip_proxy = state
        app.state.services = state.services  # all the routes reach (app/api/deps.py)
        loader = asyncio.create_task(
            start_encoders(settings, state, app.state.startup, upstream_url)
        )
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
            if echo is not None:
                await asyncio.to_thread(echo.stop)

    app = FastAPI(
        title="clip-proxy",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JsonResponse,
    )
    app.include_router(chat.router)
    app.include_router(embeddings.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(
        playground_router(
            settings.playground,
            auth_required=bool(settings.client_keys),
            prompt_format=settings.prompt_format.value,
        )
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Reliability and auth (outermost last): auth, then shedding/draining, then body limit.
    app.state.admission = admission  # for `clip-proxy serve`'s DrainingServer
    app.add_middleware(AdmissionMiddleware, admission=admission)
    app.state.startup = Startup()
    app.add_middleware(
        ClientAuthMiddleware,
        keys=key_digests(settings.client_keys),
        protect_metrics=settings.metrics_require_auth,
    )
    # Added last, so it runs first: the request id is bound before anything else runs.
    app.add_middleware(RequestObserver, metrics=metrics)
    install_error_handlers(app)
    return app


def build_state(
    settings: Settings,
    metrics: Metrics,
    *,
    draining: Callable[[], bool],
    upstream_url: str | None = None,
) -> AppState:
    """Every component of one process; `upstream_url` stands in for the setting (the
    echo upstream's address once it runs)."""
    fetcher = SafeFetcher(
        FetchPolicy(
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=frozenset(settings.fetch_allow_hosts),
            allow_networks=tuple(settings.fetch_allow_networks),
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
        upstream_url or settings.upstream_base_url,
        settings.upstream_api_key.get_secret_value(),
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
        keepalive_expiry_s=settings.upstream_keepalive_expiry_s,
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
        forward_headers=settings.forward_headers,
    )
    options = ChatOptions(
        default_model=settings.default_model,
        prompt_format=settings.prompt_format,
        decimals=settings.embedding_decimals,
        limits=ChatLimits(
            max_images=settings.max_images_per_request,
            max_image_bytes=settings.max_image_bytes,
            max_body_bytes=settings.max_body_bytes,
        ),
        ping_interval_s=settings.ping_interval,
        templates=settings.templates(),
        send_image_sizes=settings.echo_upstream,
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
        cache=cache,
        texts=texts,
        services=Services(
            chat=ChatService(options, images, upstream, metrics=metrics),
            embeddings=EmbeddingsService(embeddings_options, images, texts),
            models=ModelsService(upstream),
            health=HealthService(images, metrics, draining=draining),
        ),
    )


async def start_encoders(
    settings: Settings, state: AppState, startup: Startup | None = None, upstream_url: str = ""
) -> None:
    """Load one model copy per device off the event loop; the pool warms each worker.

    `/readyz` turns 200 once every worker is warm (the pool's `ready`), and one `ready`
    line is logged. A model that does not load is one ERROR line naming the setting and
    the ways out, noted in `startup.failure`, and `/readyz` stays 503: this runs as a
    background task, whose exception would otherwise surface only as "Task exception was
    never retrieved".
    """
    try:
        await asyncio.to_thread(check_model_source, settings.clip_model)
        encoders = await asyncio.to_thread(
            load_encoders,
            settings.clip_model,
            settings.device,
            settings.encoder_dtype.value,
            quantize=settings.encoder_quantize.value,
            compile=settings.encoder_compile,
            warm_batch=settings.max_batch,
        )
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ModelUnavailable) else f"{type(exc).__name__}: {exc}"
        message = describe_load_failure(settings.clip_model, reason)
        logger.debug("the model's load failure in full", exc_info=True)
        logger.error(message)
        if startup is not None:
            startup.failure = message
        return
    try:
        text_side_ok = await start_text_side(settings, state, encoders[0])
    except Exception:
        # Not the model: the label vocabulary, the cache namespace. The cause, as raised.
        logger.exception("start-up failed; /readyz stays 503")
        text_side_ok = False
    if not text_side_ok:
        if startup is not None:
            startup.failure = "start-up failed"
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
    # The pool warms each worker in its own thread; one waiting thread here, not a poll.
    while not await asyncio.to_thread(pool.wait_ready, 1.0):
        pass
    logger.info(
        "ready",
        extra={
            "model": settings.clip_model,
            "device": pool.devices,
            "dtype": str(encoders[0].dtype).removeprefix("torch."),
            "workers": len(pool.devices),
            "upstream": describe_upstream(settings, upstream_url),
        },
    )


def describe_upstream(settings: Settings, upstream_url: str) -> str:
    """The upstream for a log line: no key, no password in the URL."""
    url = upstream_url or settings.upstream_base_url
    parts = urlsplit(url)
    if "@" in parts.netloc:
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return f"echo (embedded, {url})" if settings.echo_upstream else url


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
        state.services.chat.labeler = await asyncio.to_thread(build_labeler, settings, text)
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
