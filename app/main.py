"""The composition root: `create_app(settings)` wires every component for one process, and
`AppState` holds what it built. Routes see only the services (`app/api/deps.py`).

    app = create_app(Settings(upstream_base_url="http://127.0.0.1:9000/v1"))

The lifespan opens the shared HTTP clients (and, with `UPSTREAM_BASE_URL=echo`, starts the
embedded echo upstream) and starts the engine (`app.engine`) in the background: the server
answers `/healthz` at once and `/readyz` turns 200 once the engine is ready, when one
`ready` line is logged. A model that cannot be loaded is logged as one message with the
ways out, and `app.state.startup.failure` holds it: `clip-proxy serve` then exits non-zero,
while an app under test stays up with `/readyz` at 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI

from app.api import chat, embeddings, health, models
from app.api.admission import Admission, AdmissionMiddleware
from app.api.auth import ClientAuthMiddleware, key_digests
from app.api.body_limit import BodyBudget, BodyLimitMiddleware
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.api.json_response import JsonResponse
from app.api.observe import RequestObserver
from app.api.playground import playground_router
from app.config import Settings
from app.echo_upstream import EchoUpstream
from app.embeddings_service import EmbeddingsOptions, EmbeddingsService
from app.engine.engine import Engine
from app.health_service import HealthService
from app.lifecycle import Startup, freeze_startup_objects, refuse_worker_processes
from app.metrics import Metrics
from app.models_service import ModelsService
from app.safe_fetch import FetchPolicy, SafeFetcher
from app.service import ChatLimits, ChatOptions, ChatService
from app.upstream.client import RetryPolicy, UpstreamClient
from app.upstream.rate_limit import RateLimiter
from app.upstream.session import TlsOptions

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """Everything one process built: the services the routes reach (`services`), and the
    components under them, kept here to start and close them in order."""

    settings: Settings
    metrics: Metrics
    engine: Engine
    fetcher: SafeFetcher
    upstream: UpstreamClient
    services: Services


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics(gpu_memory=Engine.gpu_memory)
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
            start_engine(settings, state.engine, app.state.startup, upstream_url)
        )
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await state.engine.aclose()
            await state.upstream.aclose()
            await state.fetcher.aclose()
            if echo is not None:
                await asyncio.to_thread(echo.stop)

    docs = settings.docs
    app = FastAPI(
        title="clip-proxy",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
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
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        budget=BodyBudget(settings.max_inflight_body_bytes),
    )
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
            proxy=settings.fetch_proxy,
        )
    )
    engine = Engine.from_settings(settings, metrics, fetcher)
    upstream = UpstreamClient(
        upstream_url or settings.upstream_base_url,
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
        preset=settings.prompt_preset,
        include_vector=settings.include_vector,
        ocr_max_chars=settings.ocr_max_chars,
    )
    embeddings_options = EmbeddingsOptions(
        model_name=settings.clip_model,
        max_inputs=2048,
        max_images=settings.max_images_per_request,
    )
    return AppState(
        settings=settings,
        metrics=metrics,
        engine=engine,
        fetcher=fetcher,
        upstream=upstream,
        services=Services(
            chat=ChatService(options, engine, upstream, metrics=metrics),
            embeddings=EmbeddingsService(embeddings_options, engine),
            models=ModelsService(upstream),
            health=HealthService(engine, metrics, draining=draining),
        ),
    )


async def start_engine(
    settings: Settings, engine: Engine, startup: Startup, upstream_url: str
) -> None:
    """Load and warm the models in the background; once ready, freeze what start-up built
    and log one `ready` line. A failure is noted in `startup` (the engine logged it)."""
    failure = await engine.start()
    if failure is not None:
        startup.failure = failure
        return
    freeze_startup_objects()
    await engine.wait_ready()
    logger.info(
        "ready",
        extra={
            "model": settings.clip_model,
            "device": engine.devices,
            "dtype": engine.dtype,
            "workers": len(engine.devices),
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
