"""Strings to CLIP text vectors, off the event loop, one batch at a time.

The text tower is small next to the vision tower and text requests are rare next to
images, so it gets no dynamic batching: each call's texts form its own batches (up to
`max_batch`), run in one dedicated thread, which also serialises use of the model.

    texts = TextPipeline()
    texts.attach(encoder)
    vectors, tokens = await texts.vectors(["a photo of a dog"])
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from app.errors import EngineNotReady, InvalidRequest

Vectors = npt.NDArray[np.float32]


class TextEncoder(Protocol):
    """What the pipeline needs from a text tower (see `ClipTextEncoder`)."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]: ...


class TextPipeline:
    """Turns strings into unit vectors; `ready` once the text tower is loaded."""

    def __init__(self, *, max_batch: int = 64) -> None:
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="text-encoder")
        self._encoder: TextEncoder | None = None
        self._unavailable = ""

    @property
    def ready(self) -> bool:
        return self._encoder is not None

    def attach(self, encoder: TextEncoder) -> None:
        self._encoder = encoder

    def disable(self, reason: str) -> None:
        """The checkpoint has no usable text tower: text inputs are refused, not retried."""
        self._unavailable = reason

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def vectors(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """Unit vectors, (n, dim), and the token count of each text."""
        if self._encoder is None:
            if self._unavailable:
                raise InvalidRequest(self._unavailable, param="input", code="no_text_encoder")
            raise EngineNotReady("text encoder")
        encoder = self._encoder
        loop = asyncio.get_running_loop()
        batches: list[Vectors] = []
        counts: list[int] = []
        for start in range(0, len(texts), self._max_batch):
            chunk = texts[start : start + self._max_batch]
            vectors, tokens = await loop.run_in_executor(self._executor, encoder.encode, chunk)
            batches.append(vectors)
            counts.extend(tokens)
        if not batches:
            return np.zeros((0, encoder.dim), dtype=np.float32), []
        return np.concatenate(batches), counts
