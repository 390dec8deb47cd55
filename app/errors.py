"""Every error the proxy answers with, and the one place that turns them into HTTP.

The tree (status in brackets):

    ProxyError                      any failure a client is told about
    ├── InvalidRequest        [400] malformed JSON, missing or mistyped fields
    │   ├── InvalidImage      [400] animated, bomb, too thin, empty
    │   │   └── UnreadableImage [400] not an image, truncated, unsupported format
    │   ├── TooManyImages     [400] more images than CLIP_PROXY_MAX_IMAGES_PER_REQUEST
    │   ├── ForbiddenUrl      [400] an image URL the proxy will not fetch (SSRF rules)
    │   ├── ImageFetchFailed  [400] an allowed URL that could not be fetched as an image
    │   ├── InvalidDocument   [400] a PDF or text file that cannot be read (invalid_document)
    │   └── DocumentEncrypted [400] a PDF with a password (document_encrypted)
    ├── NotFound              [404] a model the upstream does not list
    ├── PayloadTooLarge       [413] body or image over its byte limit
    ├── RequestTimeout        [408] the body did not arrive within CLIP_PROXY_BODY_TIMEOUT_S
    ├── Unauthorized          [401] missing or wrong client key
    ├── Overloaded            [503] queue full, draining (carries Retry-After)
    │   └── EngineNotReady    [503] a model still loading, or one that failed to load
    ├── RateLimited           [429] the proxy's own rate limit toward the upstream (Retry-After)
    ├── EncoderFailed         [500] the model itself failed on a good image
    ├── ModelFailed           [500] OCR or the captioner failed on an image (ocr_failed, ...)
    ├── EngineTimeout         [504] OCR or a caption not done within its deadline
    ├── DocumentTimeout       [504] a document not read within DOCUMENT_TIMEOUT_S
    └── UpstreamError               the DeepSeek side
        ├── UpstreamUnreachable [502] connection refused or reset, egress proxy failed
        ├── UpstreamTlsError  [502] the upstream's certificate failed verification
        ├── UpstreamBadResponse [502] garbage, or not an event stream for a stream request
        ├── UpstreamResponseTooLarge [502] a body past UPSTREAM_MAX_BODY_BYTES, decoded
        ├── UpstreamStreamTruncated [502] a stream that ended before `data: [DONE]`
        │                              (only ever as an event inside a begun stream)
        ├── UpstreamTimeout   [504] no answer in time
        └── UpstreamStatus    [its status] the upstream answered an error; body relayed

Foreign exceptions (aiohttp, httpx, PIL, pydantic) are translated where they are raised,
once, with `raise ... from exc` (the upstream's in `app/upstream/session.py`).

Error bodies the proxy writes itself also carry `"request_id"` beside `"error"` (the same id
as the `X-Request-ID` header), so a user can quote it; a relayed upstream body stays as sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.observability.request_context import current_request_id, note_error


class ProxyError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    @property
    def label(self) -> str:
        """A short fixed name for metrics and logs (never the message: it may quote input)."""
        return self.code or self.error_type


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`, plus the
    request id when written while serving a request."""
    body: dict[str, Any] = {
        "error": {"message": message, "type": error_type, "param": param, "code": code}
    }
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_sse_event(error: ProxyError) -> bytes:
    """An error inside a stream that has already begun: one `data:` event, then the end."""
    note_error(error.label)
    return b"data: " + orjson.dumps(error.to_body()) + b"\n\n"


def first_proxy_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to show the client from a TaskGroup's failures: the first one of ours
    (several images of one request failing at once surface as one group)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            error = first_proxy_error(error)
        if isinstance(error, ProxyError):
            return error
    return group.exceptions[0]


class InvalidRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class UnreadableImage(InvalidImage):
    """Bytes no decoder reads: not an image, a format not read, truncated or corrupt."""

    code = "invalid_image_format"


class TooManyImages(InvalidRequest):
    code = "too_many_images"


class ForbiddenUrl(InvalidRequest):
    code = "forbidden_url"


class ImageFetchFailed(InvalidRequest):
    code = "image_fetch_failed"


class InvalidDocument(InvalidRequest):
    """A PDF or text file that cannot be read: corrupt, truncated, empty, not UTF-8."""

    code = "invalid_document"


class DocumentEncrypted(InvalidRequest):
    code = "document_encrypted"


class NotFound(ProxyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(ProxyError):
    """The client did not send its body in time; the connection is closed after the answer
    (what is left of the body would otherwise be read as the next request)."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "body_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class Unauthorized(ProxyError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Overloaded(ProxyError):
    status_code = 503
    error_type = "overloaded_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class EngineNotReady(Overloaded):
    """The engine's one "not ready" answer: a model is still loading (or failed to load, and
    /readyz says so). Clients retry after `Retry-After`; nothing is wrong with their request."""

    code = "not_ready"

    def __init__(self, what: str) -> None:
        super().__init__(f"the {what} is not ready", retry_after_s=5)


class RateLimited(ProxyError):
    """The proxy's client-side rate limit toward the upstream is full for longer than a
    request may wait; the client should come back after `Retry-After` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EncoderFailed(ProxyError):
    status_code = 500
    error_type = "server_error"
    code = "encoder_failed"


class ModelFailed(ProxyError):
    """A model beside CLIP (OCR, captions) failed on one image; only its request fails."""

    status_code = 500
    error_type = "server_error"
    code = "model_failed"


class EngineTimeout(ProxyError):
    status_code = 504
    error_type = "server_error"
    code = "engine_timeout"


class DocumentTimeout(ProxyError):
    """Reading a document took longer than DOCUMENT_TIMEOUT_S."""

    status_code = 504
    error_type = "server_error"
    code = "document_timeout"


class UpstreamError(ProxyError):
    status_code = 502
    error_type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTlsError(UpstreamError):
    """Never retried: the certificate would fail the same way again."""

    code = "upstream_tls_error"


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"


class UpstreamResponseTooLarge(UpstreamError):
    code = "upstream_response_too_large"


class UpstreamStreamTruncated(UpstreamError):
    code = "upstream_stream_truncated"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status; the client sees that status and body."""

    def __init__(
        self,
        status_code: int,
        body: bytes,
        content_type: str | None,
        *,
        retry_after: str | None = None,
    ) -> None:
        # Retry-After is relayed so a client backs off as long as the upstream asked.
        headers = {"Retry-After": retry_after} if retry_after else None
        super().__init__(f"upstream answered {status_code}", code=str(status_code), headers=headers)
        self.status_code = status_code
        self.body = body
        self.content_type = content_type

    @property
    def label(self) -> str:
        return "upstream_status"  # the code itself is counted by clip_proxy_upstream_responses

    def to_body(self) -> dict[str, Any]:
        # An upstream that already speaks OpenAI's error shape is relayed as it is;
        # anything else (an HTML page from a gateway, say) is wrapped so clients can parse it.
        try:
            parsed = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return parsed
        text = self.body[:2000].decode("utf-8", "replace").strip()
        message = f"upstream answered {self.status_code}: {text}" if text else self.message
        return error_body(message, self.error_type, None, self.code)
