"""The OCR and caption pools the settings ask for, built and not started (the engine
starts them: OCR at once, captions after CLIP has loaded)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from PIL import Image

from app.config import Settings
from app.engine import clip
from app.engine.caption import Captioner
from app.engine.engine_events import MetricsWorkerEvents
from app.engine.image_pipeline import ImageBytes
from app.engine.ocr import OcrModel
from app.engine.workers import WorkerPool
from app.metrics import Metrics

WordsPool = WorkerPool[ImageBytes, str]


def words_pools(
    settings: Settings, metrics: Metrics, decode: Callable[[bytes, str], Image.Image]
) -> tuple[WordsPool | None, WordsPool | None]:
    """The OCR pool (when `ocr_enabled`) and the caption pool (when `caption_model` is
    set), each loading its models with `decode` for the pixels; None for one that is off."""
    ocr = captions = None
    if settings.ocr_enabled:
        ocr = WorkerPool(
            "ocr",
            functools.partial(
                OcrModel.load,
                threads=settings.ocr_threads,
                decode=decode,
                use_cuda=settings.ocr_device == "cuda",
                max_boxes=settings.ocr_max_boxes,
                layout=settings.ocr_layout,
                gate_side=settings.ocr_gate_side,
                on_skip=lambda reason: metrics.ocr_skipped.labels(reason=reason).inc(),
            ),
            workers=settings.ocr_workers,
            max_queue=settings.ocr_queue_size,
            timeout_s=settings.ocr_timeout_s,
            events=MetricsWorkerEvents(metrics, "ocr"),
        )
    if settings.caption_model:
        captions = WorkerPool(
            "caption",
            functools.partial(
                Captioner.load,
                settings.caption_model,
                caption_device(settings.caption_device),
                decode,
            ),
            max_batch=settings.caption_max_batch,
            max_queue=settings.caption_queue_size,
            timeout_s=settings.caption_timeout_s,
            events=MetricsWorkerEvents(metrics, "caption"),
        )
    return ocr, captions


def caption_device(setting: str) -> str:
    """`auto`: the first GPU if there is one, else the CPU."""
    if setting != "auto":
        return "cuda:0" if setting == "cuda" else setting
    devices = clip.resolve_devices(["auto"])
    return devices[0]
