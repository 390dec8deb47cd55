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
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the scrape size and no dashboard reads them.
disable_created_metrics()

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
        self.cache_hits = Counter(
            "clip_proxy_cache_hits", "Image vectors served from the cache", registry=r
        )
        self.cache_misses = Counter(
            "clip_proxy_cache_misses", "Image vectors that had to be computed", registry=r
        )
        r.register(_GpuMemoryCollector(gpu_memory))
        # Reliability (issue #5)
        self.upstream_retries = Counter(
            "clip_proxy_upstream_retries",
            "Upstream attempts retried, by the error or status that caused the retry",
            ["reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            "clip_proxy_requests_refused",
            "Requests refused at the door: shed (overloaded) or draining",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
