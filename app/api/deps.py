"""Access to the per-app components the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.cache import EmbeddingCache
from app.config import Settings
from app.embeddings_service import EmbeddingsService
from app.image_pipeline import ImagePipeline
from app.metrics import Metrics
from app.safe_fetch import SafeFetcher
from app.service import ChatService
from app.text_pipeline import TextPipeline
from app.upstream.client import UpstreamClient


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    images: ImagePipeline
    fetcher: SafeFetcher
    upstream: UpstreamClient
    chat: ChatService
    # Feature cache, text tower and embeddings (issue #6)
    cache: EmbeddingCache
    texts: TextPipeline
    embeddings: EmbeddingsService


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.clip_proxy
    return state
