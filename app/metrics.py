"""Every Prometheus metric of clip-proxy, defined once, on a registry of its own.

One `Metrics` per app (not the global registry), so two apps in one test process do not
mix their numbers. Names start `clip_proxy_`; labels are few and never carry a user, key,
URL or model input.

    metrics = Metrics()
    metrics.request_duration.labels(route="/v1/chat/completions", status="2xx").observe(0.4)
    body = metrics.render()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the scrape size and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request and upstream latencies: from a cached text request (ms) to a long reasoning reply.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# One CLIP batch: ~1 ms on a GPU to seconds on a CPU.
_ENCODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


MemoryReading = dict[str, tuple[int, int]]  # device -> (used bytes, total bytes)


class _GpuMemoryCollector(Collector):
    """VRAM per device, read at scrape time. HELP/TYPE lines appear even with no GPU."""

    def __init__(self, read: Callable[[], MemoryReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "clip_proxy_gpu_memory_used_bytes", "GPU memory in use on the device", labels=["device"]
        )
        total = GaugeMetricFamily(
            "clip_proxy_gpu_memory_total_bytes", "GPU memory on the device", labels=["device"]
        )
        for device, (used_bytes, total_bytes) in self._read().items():
            used.add_metric([device], used_bytes)
            total.add_metric([device], total_bytes)
        yield used
        yield total


def _no_gpus() -> MemoryReading:
    return {}


class Metrics:
    """The metrics of one proxy process."""

    def __init__(self, gpu_memory: Callable[[], MemoryReading] = _no_gpus) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "clip_proxy_request_duration_seconds",
            "Time from request received to response finished",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_ttft = Histogram(
            "clip_proxy_upstream_ttft_seconds",
            "Time from sending upstream to the first byte of its answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_duration = Histogram(
            "clip_proxy_encode_duration_seconds",
            "Time one encoder batch spends in the model",
            ["device"],
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        self.encode_queue = Histogram(
            "clip_proxy_encode_queue_seconds",
            "Time an image waits in the encoder queue before its batch runs",
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clip_proxy_batch_size",
            "Images per encoder batch (the sum counts images encoded)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # Cache: each backend (memory, redis) counts its own lookups, so a vector found in
        # Redis after a memory miss is one memory miss and one redis hit; a vector computed
        # is a miss in every backend.
        self.cache_hits = Counter(
            "clip_proxy_cache_hits",
            "Image vectors found in a cache backend",
            ["backend"],
            registry=r,
        )
        self.cache_misses = Counter(
            "clip_proxy_cache_misses",
            "Image vector lookups a cache backend did not hold",
            ["backend"],
            registry=r,
        )
        self.cache_errors = Counter(
            "clip_proxy_cache_errors",
            "Cache operations that failed or were skipped (the vector was computed instead)",
            ["backend"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "clip_proxy_cache_bytes",
            "Bytes of vectors held by an in-process cache backend",
            ["backend"],
            registry=r,
        )
        self.cache_single_flight_joins = Counter(
            "clip_proxy_cache_single_flight_joins",
            "Image lookups that joined an identical one already in flight",
            registry=r,
        )
        # Encoder pool health (issue #3). The gauges read the pool at scrape time.
        self.encoder_queue_depth = Gauge(
            "clip_proxy_encode_queue_depth", "Images waiting in the encoder queue", registry=r
        )
        self.encoder_workers_ready = Gauge(
            "clip_proxy_encoder_workers_ready", "Encoder workers alive and warm", registry=r
        )
        self.encoder_cpu_fallbacks = Counter(
            "clip_proxy_encoder_cpu_fallbacks",
            "Encoder workers moved to the CPU after CUDA ran out of memory on one image",
            ["device"],
            registry=r,
        )
        self.encoder_worker_restarts = Counter(
            "clip_proxy_encoder_worker_restarts",
            "Encoder worker threads that died and were replaced",
            ["device"],
            registry=r,
        )
        self.encoder_dropped = Counter(
            "clip_proxy_encoder_dropped_images",
            "Queued images skipped before compute because their request was gone",
            registry=r,
        )
        r.register(_GpuMemoryCollector(gpu_memory))

    def render(self) -> bytes:
        return generate_latest(self.registry)
