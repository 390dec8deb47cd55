"""The 413 answers of ingest, each naming the setting that set its limit, so the user knows
what to raise (or what the operator set).

    raise image_too_large(limits.max_bytes, param="messages[0].content[1].image_url")
"""

from __future__ import annotations

from app.errors import PayloadTooLarge

MAX_IMAGE_BYTES_SETTING = "CLIP_PROXY_MAX_IMAGE_BYTES"
MAX_BODY_BYTES_SETTING = "CLIP_PROXY_MAX_BODY_BYTES"
MAX_DOCUMENT_BYTES_SETTING = "CLIP_PROXY_MAX_DOCUMENT_BYTES"


def image_too_large(max_bytes: int, param: str | None) -> PayloadTooLarge:
    """The 413 for one image over its byte limit."""
    return PayloadTooLarge(
        f"image is larger than {max_bytes} bytes (the limit is {MAX_IMAGE_BYTES_SETTING})",
        param=param,
    )


def body_too_large(max_bytes: int) -> PayloadTooLarge:
    """The 413 for a request body over its byte limit."""
    return PayloadTooLarge(
        f"the request body is larger than {max_bytes} bytes (the limit is {MAX_BODY_BYTES_SETTING})"
    )


def document_too_large(max_bytes: int, param: str | None) -> PayloadTooLarge:
    """The 413 for one document over its byte limit."""
    return PayloadTooLarge(
        f"the document is larger than {max_bytes} bytes"
        f" (the limit is {MAX_DOCUMENT_BYTES_SETTING})",
        param=param,
    )
