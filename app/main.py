"""The application factory: `create_app(settings)` wires every component for one process.

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

The lifespan opens the shared HTTP clients and starts loading the encoder in the
background: the server answers `/healthz` at once and `/readyz` turns 200 once every
encoder worker is loaded and warm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api import chat, health, models
from app.api.admission import Admission, AdmissionMiddleware
from app.api.auth import ClientAuthMiddleware, load_client_keys
from app.api.body_limit import BodyLimitMiddleware
from app.api.deps import AppState
from app.config import Settings
from app.encoder.clip import gpu_memory, load_encoders
from app.encoder.pool import BatchReport, EncoderPool
from app.errors import ProxyError, error_body
from app.image_pipeline import ImagePipeline
from app.ingest import ImageLimits
from app.metrics import Metrics
from app.rate_limit import RateLimiter
from app.safe_fetch import FetchPolicy, SafeFetcher
from app.service import ChatOptions, ChatService
from app.upstream import RetryPolicy, UpstreamClient

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        app.state.clip_proxy = state
        refused = state.metrics.requests_refused
        app.state.admission.on_refused = lambda reason: refused.labels(reason=reason).inc()
        loader = asyncio.create_task(start_encoders(settings, state))
        try:
            yield
        finally:
            loader.cancel()
            state.images.close()
            await state.upstream.aclose()
            await state.fetcher.aclose()

    app = FastAPI(title="clip-proxy", version="0.1.0", lifespan=lifespan)
    app.include_router(chat.router)
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
    install_error_handlers(app)
    return app


def build_state(settings: Settings) -> AppState:
    metrics = Metrics(gpu_memory=gpu_memory)
    fetcher = SafeFetcher(
        FetchPolicy(
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=frozenset(settings.fetch_allow_hosts),
            allow_networks=tuple(settings.fetch_allow_networks),
        )
    )
    images = ImagePipeline(
        ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
        fetcher,
    )
    upstream = UpstreamClient(
        settings.upstream_base_url,
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
    )
    options = ChatOptions(
        default_model=settings.default_model,
        prompt_format=settings.prompt_format,
        decimals=settings.embedding_decimals,
        max_images=settings.max_images_per_request,
    )
    return AppState(
        settings=settings,
        metrics=metrics,
        images=images,
        fetcher=fetcher,
        upstream=upstream,
        chat=ChatService(options, images, upstream),
    )


async def start_encoders(settings: Settings, state: AppState) -> None:
    """Load and warm one model copy per device off the event loop, then open for traffic."""
    try:
        encoders = await asyncio.to_thread(
            load_encoders, settings.clip_model, settings.device, settings.encoder_dtype.value
        )
    except Exception:
        logger.exception("could not load the CLIP encoder; /readyz stays 503")
        return
    pool = EncoderPool(
        encoders,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        on_batch=lambda report: observe_batch(state.metrics, report),
    )
    pool.start()
    state.images.attach(pool)
    logger.info("encoder ready", extra={"devices": pool.devices})


def observe_batch(metrics: Metrics, report: BatchReport) -> None:
    metrics.batch_size.observe(report.size)
    metrics.encode_duration.labels(device=report.device).observe(report.encode_s)
    for wait in report.queue_wait_s:
        metrics.encode_queue.observe(wait)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        return JSONResponse(exc.to_body(), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.errors()[0].get("msg")), "invalid_request_error"), 400
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(exc.detail), error_type), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse(error_body("internal error in clip-proxy", "server_error"), 500)
