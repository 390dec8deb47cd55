"""The composition root: `create_app(settings)` wires the components of one process
(`app/runtime/components.py` builds them) into the ASGI app: routes, middleware, lifespan.
Routes see only the services (`app/api/deps.py`).

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import chat, embeddings, health, messages, models, responses
from app.api.admission import Admission, AdmissionMiddleware
from app.api.auth import ClientAuthMiddleware, key_digests
from app.api.body_budget import BodyBudget
from app.api.body_limit import BodyLimitMiddleware
from app.api.cors import Cors
from app.api.docs import docs_router
from app.api.early_answer import Lingering
from app.api.errors import install_error_handlers
from app.api.json_response import JsonResponse
from app.api.observe import RequestObserver
from app.api.openapi import install_openapi
from app.api.playground import playground_router
from app.config import Settings
from app.echo.upstream import EchoUpstream
from app.engine.engine import Engine
from app.metrics import Metrics
from app.runtime.components import build_state, start_engine
from app.runtime.lifecycle import Startup, refuse_worker_processes

logger = logging.getLogger(__name__)


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
            await state.vision.aclose()  # before the engine: its cache writes first
            await state.engine.aclose()
            await state.upstream.aclose()
            await state.fetcher.aclose()
            await state.services.responses.aclose()
            if echo is not None:
                await asyncio.to_thread(echo.stop)

    docs = settings.docs
    app = FastAPI(
        title="clip-proxy",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        docs_url=None,  # app/api/docs.py serves /docs offline
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(embeddings.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(docs_router(docs))
    app.include_router(
        playground_router(
            settings.playground,
            auth_required=bool(settings.client_keys),
            prompt_format=settings.prompt_format.value,
        )
    )
    lingered = metrics.lingering_closes
    lingering = Lingering(
        time_s=settings.lingering_time_s,
        timeout_s=settings.lingering_timeout_s,
        max_bytes=settings.lingering_max_bytes,
        on_close=lambda reason: lingered.labels(reason=reason).inc(),
    )
    budget = BodyBudget(settings.max_inflight_body_bytes)
    metrics.body_bytes_held.set_function(lambda: budget.held)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        budget=budget,
        lingering=lingering,
    )
    # Reliability and auth (outermost last): auth, then shedding/draining, then body limit.
    app.state.admission = admission  # for `clip-proxy serve`'s DrainingServer
    app.add_middleware(AdmissionMiddleware, admission=admission, lingering=lingering)
    app.state.startup = Startup()
    app.add_middleware(
        ClientAuthMiddleware,
        keys=key_digests(settings.client_keys),
        protect_metrics=settings.metrics_require_auth,
        lingering=lingering,
    )
    # Added last, so it runs first: the request id is bound before anything else runs.
    app.add_middleware(RequestObserver, metrics=metrics)
    if settings.cors_allow_origins:  # outermost: its headers on every answer, errors too
        app.add_middleware(Cors, origins=settings.cors_allow_origins)
    install_error_handlers(app)
    install_openapi(app)
    return app
