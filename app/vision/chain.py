"""Describers in order: the first that is not cooling down is asked; one that fails (an
error, a timeout, 429, 5xx, an answer that is no description) is skipped for `cooldown_s`
and the next is asked at once. When every one failed or is cooling down the chain says so
(`AllDescribersFailed`) and the image keeps what the preset gives without a describer.

    chain = DescriberChain([local, hosted], cooldown_s=60, metrics=metrics)
    name, text = await chain.describe(prompt, image_url)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from app.metrics import Metrics
from app.vision.describer import OUTCOMES, Describer, DescriberFailed

logger = logging.getLogger(__name__)


class AllDescribersFailed(Exception):
    """No describer described the image (each failed, or was cooling down)."""


class DescriberChain:
    def __init__(
        self,
        describers: Sequence[Describer],
        *,
        cooldown_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.describers = list(describers)
        self._cooldown_s = cooldown_s
        self._metrics = metrics
        self._clock = clock
        self._cooling_until: dict[str, float] = {}
        for describer in self.describers:
            for outcome in OUTCOMES:
                metrics.describer_requests.labels(describer=describer.name, outcome=outcome)
            metrics.describer_cooldown.labels(describer=describer.name).set_function(
                self._cooling_reading(describer.name)
            )

    @property
    def identity(self) -> str:
        """What decides a description besides the image and the prompt: the models."""
        return "|".join(f"{d.name}={d.model}" for d in self.describers)

    def cooling(self, name: str) -> bool:
        return self._cooling_until.get(name, 0.0) > self._clock()

    def _cooling_reading(self, name: str) -> Callable[[], float]:
        return lambda: 1.0 if self.cooling(name) else 0.0

    async def describe(self, prompt: str, image_url: str) -> tuple[str, str]:
        """(the describer's name, its description), from the first that answers."""
        for describer in self.describers:
            if self.cooling(describer.name):
                continue
            started = time.perf_counter()
            try:
                text = await describer.describe(prompt, image_url)
            except DescriberFailed as exc:
                self._count(describer.name, exc.outcome, started)
                self._cooling_until[describer.name] = self._clock() + self._cooldown_s
                logger.warning(
                    "describer failed; cooling it down",
                    extra={
                        "describer": describer.name,
                        "outcome": exc.outcome,
                        "reason": str(exc),
                        "cooldown_s": self._cooldown_s,
                    },
                )
                continue
            self._count(describer.name, "ok", started)
            return describer.name, text
        raise AllDescribersFailed("every describer failed or is cooling down")

    def _count(self, name: str, outcome: str, started: float) -> None:
        self._metrics.describer_requests.labels(describer=name, outcome=outcome).inc()
        self._metrics.describer_duration.labels(describer=name).observe(
            time.perf_counter() - started
        )

    async def aclose(self) -> None:
        for describer in self.describers:
            await describer.aclose()
