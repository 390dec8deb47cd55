"""GPU memory as the driver sees it, through NVML (`nvidia-ml-py`).

The driver's numbers include what torch's allocator cannot see: the CUDA context, other
processes, fragmentation. NVML is initialised once, on first use; with no driver or no GPU
(a CPU test machine) every call answers "nothing" and never raises.

    used, total = nvml_memory_by_uuid()["GPU-5a9d..."]
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, bool] = {}  # "ready": NVML initialised; absent: not tried yet


def _ensure_init() -> bool:
    with _lock:
        if "ready" not in _state:
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["ready"] = True
            except Exception as exc:  # no library, no driver, no GPU: all mean "no NVML"
                logger.info(
                    "NVML unavailable; GPU memory comes from torch", extra={"why": str(exc)}
                )
                _state["ready"] = False
        return _state["ready"]


def normalise_uuid(uuid: str) -> str:
    """NVML says 'GPU-5a9d...', torch '5a9d...': compare them without the prefix."""
    return uuid.lower().removeprefix("gpu-")


def nvml_memory_by_uuid() -> dict[str, tuple[int, int]]:
    """(used, total) bytes per GPU, keyed by normalised UUID; empty without NVML."""
    if not _ensure_init():
        return {}
    import pynvml

    reading: dict[str, tuple[int, int]] = {}
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            if isinstance(uuid, bytes):  # older bindings return bytes
                uuid = uuid.decode()
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            reading[normalise_uuid(str(uuid))] = (int(memory.used), int(memory.total))
    except pynvml.NVMLError:
        logger.warning("NVML read failed; GPU memory left out of this scrape", exc_info=True)
        return {}
    return reading
