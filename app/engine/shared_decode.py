"""One decode of an image's bytes, shared by every part of one request that needs pixels.

A describe miss used to decode the same bytes up to three times: CLIP at a reduced scale,
OCR and the captioner each at full size. Now the first consumer (whichever thread gets
there first) decodes at full size, the others wait for it and take the same picture, and
CLIP reduces it (`preprocess_uint8`, within cosine 0.9999 of its own reduced decode:
bench/results/describe-27.md). Nothing is decoded when every consumer is served from its
cache.

The picture is read-only for its consumers (PIL's resize and convert make new images).
It lives only as long as the request needs it: `release()` drops it when the request's
consumers are done; a consumer that comes later still (a pool job left running after its
caller gave up) decodes for itself and keeps nothing here.

    shared = SharedDecode(lambda: decode(data, param))
    picture = shared.get()      # decoded once; errors (a bad image) are raised to each asker
    shared.release()
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from PIL import Image


class SharedDecode:
    """A lazily decoded picture for the consumers of one request; thread-safe."""

    def __init__(self, decode: Callable[[], Image.Image]) -> None:
        self._decode = decode
        self._lock = threading.Lock()
        self._image: Image.Image | None = None
        self._error: Exception | None = None
        self._released = False

    def get(self) -> Image.Image:
        """The picture, decoded by the first caller; the others block until it is."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._image is not None:
                return self._image
            try:
                image = self._decode()
            except Exception as exc:
                self._error = exc  # a bad image is bad for every consumer: decoded once
                raise
            if not self._released:
                self._image = image
            return image

    @property
    def decoded(self) -> bool:
        return self._image is not None

    def release(self) -> None:
        """The request is done with the picture: drop it (its consumers keep their own
        references while they still work on it)."""
        with self._lock:
            self._image = None
            self._released = True
