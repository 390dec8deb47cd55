"""Every component of one process, built from its Settings: the engine, the upstream client,
the image fetcher and the services over them (`build_state`), and the engine's start in the
background with the one `ready` log line (`start_engine`). `app/main.py` wires them into
the ASGI app.

    state = build_state(settings, metrics, draining=lambda: admission.draining)
    task = asyncio.create_task(start_engine(settings, state.engine, startup, upstream_url))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from app.api.deps import Services
from app.config import Settings
from app.documents.extract import RenderLimits
from app.documents.reader import DocumentReader, ReaderOptions
from app.documents.worker import ExtractionWorkers
from app.engine.engine import Engine
from app.ingest.fetch import FetchPolicy, SafeFetcher
from app.metrics import Metrics
from app.prompt.documents import DocumentTemplates
from app.runtime.lifecycle import Startup, freeze_startup_objects
from app.runtime.vision import build_vision
from app.services.chat import ChatLimits, ChatOptions, ChatService
from app.services.documents import DocumentOptions
from app.services.embeddings import EmbeddingsOptions, EmbeddingsService
from app.services.health import HealthService
from app.services.models import ModelsService
from app.services.response_store import ResponseStore
from app.upstream.client import RetryPolicy, UpstreamClient
from app.upstream.rate_limit import RateLimiter
from app.upstream.session import TlsOptions
from app.vision.bridge import VisionBridge

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
    vision: VisionBridge


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
            max_document_bytes=settings.max_document_bytes,
            max_messages=settings.max_messages,
            max_content_parts=settings.max_content_parts,
        ),
        ping_interval_s=settings.ping_interval_s,
        templates=settings.templates(),
        send_image_sizes=settings.echo_upstream,
        preset=settings.prompt_preset,
        include_vector=settings.include_vector,
        ocr_max_chars=settings.ocr_max_chars,
        description_max_chars=settings.description_max_chars,
        documents=DocumentOptions(
            max_bytes=settings.max_document_bytes,
            max_chars=settings.document_max_chars,
            max_documents=settings.max_documents_per_request,
            templates=DocumentTemplates(
                document=settings.document_template, page=settings.document_page_template
            ),
        ),
    )
    documents = DocumentReader(
        ReaderOptions(
            max_pages=settings.document_max_pages,
            timeout_s=settings.document_timeout_s,
            render=RenderLimits(
                dpi=settings.document_render_dpi,
                max_pixels=settings.document_render_max_pixels,
            ),
        ),
        ExtractionWorkers(
            workers=settings.document_workers, memory_bytes=settings.document_memory_bytes
        ),
        cache=engine.document_pages,
        ocr=engine.read_page_image,
        metrics=metrics,
    )
    vision = build_vision(settings, metrics, engine)
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
            chat=ChatService(
                options, engine, upstream, metrics=metrics, documents=documents, vision=vision
            ),
            embeddings=EmbeddingsService(embeddings_options, engine),
            models=ModelsService(upstream),
            health=HealthService(engine, metrics, draining=draining),
            responses=ResponseStore.from_url(
                settings.cache_url,
                ttl_s=settings.responses_ttl_s,
                enabled=settings.responses_store,
                prefix=settings.cache_key_prefix + "responses:",
            ),
        ),
        vision=vision,
    )


async def start_engine(
    settings: Settings, engine: Engine, startup: Startup, upstream_url: str
) -> None:
    """Load and warm the models in the background; once ready, freeze what start-up built
    and log one `ready` line. A failure is noted in `startup` (the engine logged it)."""
    # At once: loading takes seconds to minutes, and start-up is never silent meanwhile.
    logger.info(
        "loading models",
        extra={"model": settings.clip_model, "device": ",".join(settings.device)},
    )
    failure = await engine.start()
    if failure is not None:
        startup.failure = failure
        return
    freeze_startup_objects()
    failure = await engine.wait_ready()
    if failure is not None:
        startup.failure = failure
        return
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
