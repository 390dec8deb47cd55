"""What the process does around its own life, apart from wiring: the one-worker guard at
start, how start-up went, and freezing the start-up objects once the model is loaded.

    refuse_worker_processes()      # first thing in the lifespan
    freeze_startup_objects()       # once the encoders are loaded
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from dataclasses import dataclass


def refuse_worker_processes() -> None:
    """One process per container, by design; refuse to start as one of several workers.

    The encoder owns the GPU: every worker would load its own copy of CLIP, split the
    batches (smaller batches, lower throughput) and keep its own queue and metrics, so a
    scrape would see one worker's numbers. `clip-proxy serve` runs one worker; scale out with
    replicas behind the load balancer instead. uvicorn's `--workers` and `--reload` start
    the app in multiprocessing children, which is what this detects.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError(
            "PROMETHEUS_MULTIPROC_DIR is set, but clip-proxy runs one process per container "
            "and keeps its metrics in memory; unset it and scale with replicas"
        )
    if multiprocessing.parent_process() is not None:
        raise RuntimeError(
            "clip-proxy runs one worker per container (the encoder owns the GPU); start it "
            "with `clip-proxy serve`, not several uvicorn workers, and scale with replicas"
        )


def freeze_startup_objects() -> None:
    """Take everything built at start (torch, transformers, the model, the app) out of the
    garbage collector's reach.

    Those are some 400,000 long-lived objects, and a full collection walks all of them:
    about 175 ms on this machine, during which no stream is relayed (measured with
    bench/profile_proxy.py; it showed as ms-long gaps between chunks). Frozen, a full
    collection walks only what requests created since; reference counting still frees
    the frozen objects that are dropped.
    """
    gc.collect()  # what is already garbage goes now, not into the frozen set
    gc.freeze()


@dataclass
class Startup:
    """How start-up went: `failure` is the message when the model could not be loaded."""

    failure: str | None = None
