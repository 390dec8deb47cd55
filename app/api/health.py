"""Health for load balancers and orchestrators, and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import services_of
from app.api.errors import error_response
from app.api.json_response import JsonResponse
from app.api.openapi import error_responses
from app.errors import Overloaded
from app.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Never depends on the model or the upstream."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(request: Request) -> JsonResponse:
    """Ready for traffic: the encoder is loaded and warm, and the process is not draining."""
    try:
        devices = services_of(request).health.ready_devices()
    except Overloaded as not_ready:
        # A probe's answer, not a client's failure: not counted in clip_proxy_errors_total.
        return error_response(not_ready, counted=False)
    return JsonResponse({"status": "ready", "devices": devices})


@router.get("/metrics", responses=error_responses(401))
async def metrics(request: Request) -> Response:
    return Response(services_of(request).health.metrics_text(), media_type=CONTENT_TYPE)
