"""Every Prometheus metric of clip-proxy, defined once, on a registry of its own.

One `Metrics` per app (not the global registry), so two apps in one test process do not
mix their numbers. Names start `clip_proxy_`; labels are few and never carry a user, key,
URL or model input.

    metrics = Metrics()
    metrics.request_duration.labels(route="/v1/chat/completions", status="2xx").observe(0.4)
    body = metrics.render()

Adding a metric: define it here, in the section of its component (or a new section at the
end of `__init__`), with a `_seconds` / `_bytes` / `_total` name and buckets that fit it.

One process per container: the numbers live in this process's memory (no prometheus-client
multiprocess mode), which is exact because `clip-proxy serve` runs a single uvicorn worker
(see `app/main.py: refuse_worker_processes`). Scale with replicas; Prometheus scrapes each.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
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
# Per-image CPU work and fetches: a base64 decode takes well under 1 ms, a URL fetch or a
# large JPEG decode up to seconds (the fetch timeout is 5 s by default).
_IMAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Whole upstream answers and streams: a reasoning model may think for minutes.
_LONG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class DeviceMemory:
    """One GPU's memory: the driver's view (used, total) and torch's caching allocator's."""

    used: int
    total: int
    allocated: int | None = None  # bytes in live tensors
    reserved: int | None = None  # bytes the allocator holds (allocated + its cache)


MemoryReading = dict[str, DeviceMemory]  # device ("cuda:0") -> memory


class _GpuMemoryCollector(Collector):
    """VRAM per device, read at scrape time. HELP/TYPE lines appear even with no GPU.

    A failing reader (driver gone, NVML error) leaves the series out of that scrape rather
    than failing the whole `/metrics` answer.
    """

    def __init__(self, read: Callable[[], MemoryReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "clip_proxy_gpu_memory_used_bytes", "GPU memory in use on the device", labels=["device"]
        )
        total = GaugeMetricFamily(
            "clip_proxy_gpu_memory_total_bytes", "GPU memory on the device", labels=["device"]
        )
        allocated = GaugeMetricFamily(
            "clip_proxy_gpu_memory_allocated_bytes",
            "GPU memory in live torch tensors (torch.cuda.memory_allocated)",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "clip_proxy_gpu_memory_reserved_bytes",
            "GPU memory held by torch's caching allocator (torch.cuda.memory_reserved)",
            labels=["device"],
        )
        try:
            reading = self._read()
        except Exception:  # a scrape must not fail because one reader did
            reading = {}
        for device, memory in reading.items():
            used.add_metric([device], memory.used)
            total.add_metric([device], memory.total)
            if memory.allocated is not None:
                allocated.add_metric([device], memory.allocated)
            if memory.reserved is not None:
                reserved.add_metric([device], memory.reserved)
        yield from (used, total, allocated, reserved)


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
            ["route", "status", "dialect"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_ttft = Histogram(
            "clip_proxy_upstream_ttft_seconds",
            "Time from sending a streamed chat request upstream to its first token "
            "(reasoning or answer text)",
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

        # Requests, as the HTTP edge sees them (app/api/observe.py). `route` is the route
        # template ("/v1/chat/completions", "unmatched"), `status` the class ("2xx").
        self.requests = Counter(
            "clip_proxy_requests",
            "HTTP requests answered",
            ["route", "status", "dialect"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "clip_proxy_requests_in_flight",
            "API requests being served now (health and metrics probes left out)",
            registry=r,
        )
        self.errors = Counter(
            "clip_proxy_errors",
            "Requests that ended in an error, by error code (before or during a stream)",
            ["type"],
            registry=r,
        )

        # Images, per image (app/engine/image_pipeline.py).
        self.images = Counter(
            "clip_proxy_images",
            "Images received, by source: data_url, upload or url",
            ["source"],
            registry=r,
        )
        self.image_fetch = Histogram(
            "clip_proxy_image_fetch_seconds",
            "Time to get an image's bytes: URL fetch, base64 decode of a data URL, or upload",
            ["source"],
            buckets=_IMAGE_BUCKETS,
            registry=r,
        )
        self.image_decode = Histogram(
            "clip_proxy_image_decode_seconds",
            "Time to check and decode an image's bytes into RGB pixels",
            buckets=_IMAGE_BUCKETS,
            registry=r,
        )
        self.image_decodes = Counter(
            "clip_proxy_image_decodes",
            "Images decoded from their bytes, by scale: full (shared by CLIP, OCR and the "
            "captioner on a describe miss), reduced (CLIP alone, a JPEG scaled in libjpeg), "
            "device (nvJPEG)",
            ["scale"],
            registry=r,
        )
        for scale in ("full", "reduced", "device"):
            self.image_decodes.labels(scale=scale)
        self.preprocess = Histogram(
            "clip_proxy_preprocess_seconds",
            "Time to resize, crop and normalise one image for CLIP",
            buckets=_IMAGE_BUCKETS,
            registry=r,
        )

        # The upstream, per chat completion (app/services/chat.py, app/upstream/stream_meter.py).
        self.upstream_ttfb = Histogram(
            "clip_proxy_upstream_ttfb_seconds",
            "Time from sending a chat request upstream to its response headers",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "clip_proxy_upstream_duration_seconds",
            "Time from sending a chat request upstream to the last byte of its answer",
            ["mode"],
            buckets=_LONG_BUCKETS,
            registry=r,
        )
        self.upstream_responses = Counter(
            "clip_proxy_upstream_responses",
            "Upstream answers to chat requests, by HTTP status code",
            ["code"],
            registry=r,
        )
        self.stream_duration = Histogram(
            "clip_proxy_stream_duration_seconds",
            "Time a relayed stream lasts, from the upstream's headers to its end, by outcome "
            "(complete: data: [DONE] arrived; truncated: the upstream cut it; error: the "
            "upstream went silent; cancelled: the client left) and the client's dialect",
            ["outcome", "dialect"],
            buckets=_LONG_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "clip_proxy_upstream_tokens",
            "Tokens the upstream reported in usage (stream usage chunks and JSON answers)",
            ["kind"],
            registry=r,
        )

        self.build_info = Info("clip_proxy_build", "Version of this clip-proxy", registry=r)
        self.build_info.info({"version": _version(), "python": platform.python_version()})
        r.register(_GpuMemoryCollector(gpu_memory))
        # Reliability (issue #5)
        self.upstream_retries = Counter(
            "clip_proxy_upstream_retries",
            "Upstream attempts retried, by the error or status that caused the retry",
            ["reason"],
            registry=r,
        )
        # The front door (app/api/body_limit.py, app/api/early_answer.py).
        self.body_bytes_held = Gauge(
            "clip_proxy_body_bytes_held",
            "Bytes of request bodies arrived and held now, all requests together (bounded by "
            "MAX_INFLIGHT_BODY_BYTES; a declared Content-Length holds nothing until it arrives)",
            registry=r,
        )
        self.lingering_closes = Counter(
            "clip_proxy_lingering_closes",
            "Answers sent before the request body was read, after the rest of it was read and "
            "dropped (lingering close), by the answer's error code",
            ["reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            "clip_proxy_requests_refused",
            "Requests refused at the door: shed (overloaded) or draining",
            ["reason"],
            registry=r,
        )

        # Words beside the vector (issue #14): OCR and caption pools, their cache.
        self.ocr_duration = Histogram(
            "clip_proxy_ocr_duration_seconds",
            "Time to read the text in one image (decode + detection + recognition)",
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        self.ocr_skipped = Counter(
            "clip_proxy_ocr_skipped",
            "Images whose text recognition was skipped, by reason: no_text (the detector "
            "found no text box on the image shrunk to OCR_GATE_SIDE: a photo without text)",
            ["reason"],
            registry=r,
        )
        self.ocr_skipped.labels(reason="no_text")
        self.caption_duration = Histogram(
            "clip_proxy_caption_duration_seconds",
            "Time to caption one batch of images",
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        self.words_queue_seconds = Histogram(
            "clip_proxy_words_queue_seconds",
            "Time an image waited for an OCR or caption worker",
            ["kind"],
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        self.words_queue_depth = Gauge(
            "clip_proxy_words_queue_depth",
            "Images waiting for an OCR or caption worker",
            ["kind"],
            registry=r,
        )
        self.words_workers_ready = Gauge(
            "clip_proxy_words_workers_ready",
            "OCR or caption workers loaded and warm",
            ["kind"],
            registry=r,
        )
        self.words_worker_restarts = Counter(
            "clip_proxy_words_worker_restarts",
            "OCR or caption worker threads that died and were replaced",
            ["kind"],
            registry=r,
        )
        self.words_errors = Counter(
            "clip_proxy_words_errors",
            "Images OCR or captioning failed on, by reason (failed, timeout, overloaded; "
            "stopped: a worker dropped it at its deadline; remembered: not read again after "
            "a recent timeout)",
            ["kind", "reason"],
            registry=r,
        )
        self.words_jobs_active = Gauge(
            "clip_proxy_words_jobs_active",
            "Images an OCR or caption worker has begun and not finished (0: every worker free)",
            ["kind"],
            registry=r,
        )
        self.words_cache_hits = Counter(
            "clip_proxy_words_cache_hits",
            "OCR texts or captions found in a cache backend",
            ["kind", "backend"],
            registry=r,
        )
        self.words_cache_misses = Counter(
            "clip_proxy_words_cache_misses",
            "OCR text or caption lookups a cache backend did not hold",
            ["kind", "backend"],
            registry=r,
        )
        self.prompt_chars = Histogram(
            "clip_proxy_prompt_chars",
            "Characters of the messages sent upstream per chat request, by preset",
            ["preset"],
            buckets=(100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000),
            registry=r,
        )
        # Documents (issue #25): pages read, by how (text layer or OCR), and time per document.
        self.document_pages = Counter(
            "clip_proxy_document_pages",
            "Document pages read (cache misses only), by how: text (the PDF's text layer) or ocr",
            ["read"],
            registry=r,
        )
        for read in ("text", "ocr"):
            self.document_pages.labels(read=read)
        self.document_duration = Histogram(
            "clip_proxy_document_duration_seconds",
            "Time to read one document (cache lookups, extraction and OCR of its pages)",
            buckets=_ENCODE_BUCKETS,
            registry=r,
        )
        # Describers: vision models asked over HTTP (app/vision/).
        self.describer_requests = Counter(
            "clip_proxy_describer_requests",
            "Describer requests by describer and outcome (ok, timeout, rate_limited, "
            "server_error, client_error, unreachable, bad_response)",
            ["describer", "outcome"],
            registry=r,
        )
        self.describer_duration = Histogram(
            "clip_proxy_describer_duration_seconds",
            "Time a describer took to answer (or fail), per describer",
            ["describer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.describer_cooldown = Gauge(
            "clip_proxy_describer_cooldown",
            "1 while a describer is skipped after a failure (DESCRIBER_COOLDOWN_S), else 0",
            ["describer"],
            registry=r,
        )
        self.describer_fallbacks = Counter(
            "clip_proxy_describer_fallbacks",
            "Images that got no description because every describer failed or was cooling "
            "down (they keep OCR, tags and caption)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def status_class(status: int) -> str:
    """`200` -> `"2xx"`: few label values, and the dashboards read classes anyway."""
    return f"{status // 100}xx"


def _version() -> str:
    try:
        return metadata.version("clip-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"
