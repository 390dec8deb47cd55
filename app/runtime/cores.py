"""The CPU cores this process may use, and the OCR pool's shape chosen from them.

`os.cpu_count()` counts the host's cores; a container or a `taskset` gives the process
fewer: its CPU affinity (`os.sched_getaffinity`) and a cgroup v2 quota (`cpu.max`, what
`docker run --cpus` and a Kubernetes CPU limit set) bound what it may use.

    usable_cores()            # 2 on a 2-core box, 4 under `--cpus 4` on a 64-core host
    ocr_shape(4)              # (2, 1): OCR_WORKERS x OCR_THREADS
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# The default shape, by measurement (bench/ocr_cores.py, bench/results/ocr-cores.md): on 2
# busy cores one onnxruntime thread per worker read 2.3-2.6x the images per second of one worker
# with two threads (intra-op threads wait on each other when the cores are shared), and two
# single-threaded workers about as many as one. A worker per two cores leaves the other half
# to CLIP, preprocessing and the event loop, and keeps one OCR model copy per two cores.
THREADS_PER_WORKER = 1
CORES_PER_WORKER = 2


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores the process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cpu_max)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))  # 1.5 CPUs: two threads may run
    return max(1, cores)


def cgroup_quota(cpu_max: Path = CPU_MAX) -> float | None:
    """CPUs' worth of time per period a cgroup v2 `cpu.max` allows; None: no limit."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]) / int(fields[1])
    except (ValueError, ZeroDivisionError):
        return None


def ocr_shape(cores: int) -> tuple[int, int]:
    """(workers, threads per worker) for `cores` usable cores."""
    return max(1, cores // CORES_PER_WORKER), THREADS_PER_WORKER
