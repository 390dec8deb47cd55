"""Health for load balancers and orchestrators, and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import state_of
from app.api.errors import error_response
from app.api.json_response import JsonResponse
from app.errors import Overloaded
from app.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Never depends on the model or the upstream."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JsonResponse:
    """Ready for traffic: the encoder is loaded and warm, and the process is not draining."""
    state = state_of(request)
    if request.app.state.admission.draining:
        return error_response(
            Overloaded("the server is shutting down", retry_after_s=1, code="draining"),
            counted=False,
        )
    if not state.images.ready:
        return error_response(
            Overloaded("the image encoder is not ready", retry_after_s=5, code="not_ready"),
            counted=False,
        )
    return JsonResponse({"status": "ready", "devices": state.images.devices})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)
