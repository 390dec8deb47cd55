"""What probes and scrapers ask: is this process ready for traffic, and its metrics.

Ready means the image encoder is loaded and warm and the process is not draining. Draining
is the admission layer's flag (`app/api/admission.py`), handed in as a callable so this
module needs nothing from the API layer.

    health = HealthService(images, metrics, draining=lambda: admission.draining)
    devices = health.ready_devices()     # or Overloaded (503, Retry-After)
"""

from __future__ import annotations

from collections.abc import Callable

from app.errors import Overloaded
from app.image_pipeline import ImagePipeline
from app.metrics import Metrics


class HealthService:
    def __init__(
        self, images: ImagePipeline, metrics: Metrics, *, draining: Callable[[], bool]
    ) -> None:
        self._images = images
        self._metrics = metrics
        self._draining = draining

    def ready_devices(self) -> list[str]:
        """The devices serving, when ready for traffic; `Overloaded` saying why not."""
        if self._draining():
            raise Overloaded("the server is shutting down", retry_after_s=1, code="draining")
        if not self._images.ready:
            raise Overloaded("the image encoder is not ready", retry_after_s=5, code="not_ready")
        return self._images.devices

    def metrics_text(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return self._metrics.render()
