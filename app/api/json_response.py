"""One JSON encoder for every body the proxy writes itself: orjson.

orjson is what reads requests (`app/api/request_body.py`) and writes the upstream body and
stream errors; answers go out through the same encoder, so a value that was read can always
be written back, byte for byte the same way.

    return JsonResponse({"status": "ready"})
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JsonResponse(JSONResponse):
    """`JSONResponse` written by orjson (compact, UTF-8, as Starlette's own)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
