"""Health for load balancers and orchestrators, and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import state_of
from app.api.responses import error_response
from app.errors import EngineNotReady, Overloaded
from app.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Never depends on the model or the upstream."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: the encoder is loaded and warm, and the process is not draining."""
    state = state_of(request)
    if request.app.state.admission.draining:
        return error_response(
            Overloaded("the server is shutting down", retry_after_s=1, code="draining"),
            counted=False,
        )
    if not state.engine.ready:
        return error_response(EngineNotReady("image encoder"), counted=False)
    return JSONResponse({"status": "ready", "devices": state.engine.devices})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)
