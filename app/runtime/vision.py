"""The vision bridge built from Settings: one describer client per CLIP_PROXY_DESCRIBERS
entry (over the upstream edge, with the upstream's TLS and egress proxy settings), the
chain over them, and the description cache beside the engine's vectors.

    bridge = build_vision(settings, metrics, engine)
"""

from __future__ import annotations

from app.config import Settings
from app.engine.engine import Engine
from app.ingest.sources import ImageLimits
from app.metrics import Metrics
from app.upstream.client import RetryPolicy, UpstreamClient
from app.upstream.session import TlsOptions
from app.vision.bridge import VisionBridge, VisionOptions
from app.vision.chain import DescriberChain
from app.vision.describer import ANSWER_MAX_BYTES, Describer
from app.vision.spec import DescriberSpec


def build_vision(settings: Settings, metrics: Metrics, engine: Engine) -> VisionBridge:
    describers = [describer_of(spec, settings) for spec in settings.describers]
    chain = cache = None
    if describers:
        chain = DescriberChain(
            describers, cooldown_s=settings.describer_cooldown_s, metrics=metrics
        )
        cache = engine.words_cache("description", chain.identity)
    options = VisionOptions(
        prompt=settings.describer_prompt,
        vision_models=tuple(settings.upstream_vision_models),
        passthrough_max_side=settings.passthrough_max_side,
        limits=ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        ),
    )
    return VisionBridge(chain, cache, options, metrics)


def describer_of(spec: DescriberSpec, settings: Settings) -> Describer:
    timeout_s = spec.timeout_s or settings.describer_timeout_s
    concurrency = spec.concurrency or settings.describer_concurrency
    client = UpstreamClient(
        spec.base_url,
        spec.api_key(),  # from the variable api_key_env names; never logged
        connect_timeout_s=min(settings.upstream_connect_timeout_s, timeout_s),
        read_timeout_s=timeout_s,
        max_connections=concurrency,
        keepalive_expiry_s=settings.upstream_keepalive_expiry_s,
        max_body_bytes=ANSWER_MAX_BYTES,
        tls=TlsOptions(
            ca_file=settings.upstream_ca_file,
            client_cert=settings.upstream_client_cert,
            client_key=settings.upstream_client_key,
        ),
        proxy=settings.upstream_proxy,
        # A failing describer gives way to the next at once: the chain is the retry.
        retry=RetryPolicy(max_retries=0),
    )
    return Describer(spec.label, spec.model, client, timeout_s=timeout_s, concurrency=concurrency)
