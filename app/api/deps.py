"""Access to the per-app components the lifespan built."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.config import Settings
from app.embeddings_service import EmbeddingsService
from app.engine.engine import Engine
from app.metrics import Metrics
from app.safe_fetch import SafeFetcher
from app.service import ChatService
from app.upstream import UpstreamClient


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    engine: Engine
    fetcher: SafeFetcher
    upstream: UpstreamClient
    chat: ChatService
    embeddings: EmbeddingsService


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.clip_proxy
    return state
