"""What the routes reach: the services, and nothing under them.

The composition root (`app/main.py`) builds them once per process, in the lifespan, and
keeps them on `app.state.services`; a route asks for them here:

    services = services_of(request)
    outcome = await services.chat.complete(chat, uploads)
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.services.chat import ChatService
from app.services.embeddings import EmbeddingsService
from app.services.health import HealthService
from app.services.models import ModelsService
from app.services.response_store import ResponseStore


@dataclass(frozen=True)
class Services:
    chat: ChatService
    embeddings: EmbeddingsService
    models: ModelsService
    health: HealthService
    responses: ResponseStore


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
