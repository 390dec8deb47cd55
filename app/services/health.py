"""What probes and scrapers ask: is this process ready for traffic, and its metrics.

Ready means the engine's models are loaded and warm and the process is not draining. Draining
is the admission layer's flag (`app/api/admission.py`), handed in as a callable so this
module needs nothing from the API layer.

    health = HealthService(engine, metrics, draining=lambda: admission.draining)
    devices = health.ready_devices()     # or Overloaded (503, Retry-After)
"""

from __future__ import annotations

from collections.abc import Callable

from app.engine.engine import Engine
from app.errors import EngineNotReady, Overloaded
from app.metrics import Metrics


class HealthService:
    def __init__(self, engine: Engine, metrics: Metrics, *, draining: Callable[[], bool]) -> None:
        self._engine = engine
        self._metrics = metrics
        self._draining = draining

    def ready_devices(self) -> list[str]:
        """The devices serving, when ready for traffic; `Overloaded` saying why not."""
        if self._draining():
            raise Overloaded("the server is shutting down", retry_after_s=1, code="draining")
        if not self._engine.ready:
            raise EngineNotReady("image encoder")
        return self._engine.devices

    def metrics_text(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return self._metrics.render()
