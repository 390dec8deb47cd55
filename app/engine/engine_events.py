"""The pools' events as Prometheus metrics: the encoder pool's batches and faults, and the
OCR and caption pools' runs and failures (the engine hands these to the pools it builds)."""

from __future__ import annotations

from app.engine.image_pipeline import ImageBytes
from app.engine.pool_jobs import BatchReport, PoolEvents
from app.engine.words_jobs import WorkerEvents
from app.engine.workers import WorkerPool
from app.metrics import Metrics


def watch(metrics: Metrics, pool: WorkerPool[ImageBytes, str]) -> None:
    """A words pool's gauges, read at scrape time."""
    metrics.words_queue_depth.labels(kind=pool.kind).set_function(lambda: pool.queue_depth)
    metrics.words_jobs_active.labels(kind=pool.kind).set_function(lambda: pool.active_jobs)
    metrics.words_workers_ready.labels(kind=pool.kind).set_function(lambda: pool.workers_ready)


class MetricsWorkerEvents(WorkerEvents):
    """An OCR or caption pool's events as Prometheus metrics."""

    def __init__(self, metrics: Metrics, kind: str) -> None:
        self._metrics = metrics
        self._kind = kind
        self._duration = metrics.ocr_duration if kind == "ocr" else metrics.caption_duration
        for reason in ("failed", "timeout", "overloaded"):
            metrics.words_errors.labels(kind=kind, reason=reason)
        metrics.words_worker_restarts.labels(kind=kind)

    def ran(self, size: int, seconds: float, queue_wait_s: list[float]) -> None:
        self._duration.observe(seconds)
        for wait in queue_wait_s:
            self._metrics.words_queue_seconds.labels(kind=self._kind).observe(wait)

    def failed(self, reason: str) -> None:
        self._metrics.words_errors.labels(kind=self._kind, reason=reason).inc()

    def restarted(self) -> None:
        self._metrics.words_worker_restarts.labels(kind=self._kind).inc()


class MetricsPoolEvents(PoolEvents):
    """The encoder pool's events as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def batch(self, report: BatchReport) -> None:
        self._metrics.batch_size.observe(report.size)
        self._metrics.encode_duration.labels(device=report.device).observe(report.encode_s)
        for wait in report.queue_wait_s:
            self._metrics.encode_queue.observe(wait)

    def dropped(self, count: int) -> None:
        self._metrics.encoder_dropped.inc(count)

    def cpu_fallback(self, device: str) -> None:
        self._metrics.encoder_cpu_fallbacks.labels(device=device).inc()

    def worker_restarted(self, device: str) -> None:
        self._metrics.encoder_worker_restarts.labels(device=device).inc()
