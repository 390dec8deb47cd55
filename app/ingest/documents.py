"""Document bytes from where a client put them: a `file` content part (`file_data` as a data
URL, or bare base64 with a `filename`), or a multipart upload told apart from images by its
content.

    source = document_from_part(part["file"], max_bytes, param="messages[0].content[1]")
    is_document_upload(data)      # a PDF, or text (not an image) -> True
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidDocument, InvalidRequest
from app.ingest.limits import document_too_large

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^;,]*)*?;base64,", re.I)
TEXT_TYPES = frozenset(
    {"text/plain", "text/markdown", "text/x-markdown", "text/csv", "application/json"}
)
# Browsers label a file they do not know (a `.md` on many systems) as octet-stream: the
# content decides then.
_PDF_TYPES = frozenset({"application/pdf", "application/x-pdf", "application/octet-stream"})
# Image formats by their first bytes: an upload starting so is an image, whatever it is called.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"\x00\x00\x00")


@dataclass(frozen=True)
class DocumentSource:
    """One document of a request: its bytes, a name for the prompt, and `param` for errors."""

    data: bytes
    name: str
    param: str


def document_from_part(
    file: dict[str, Any], index: int, max_bytes: int, *, param: str
) -> DocumentSource:
    """The bytes of a `file` part; 400 naming the part for everything it cannot be."""
    if file.get("file_id"):
        raise InvalidRequest(
            "file_id is not supported: this proxy has no Files API; send the file itself as "
            "file_data (a data URL such as data:application/pdf;base64,...)",
            param=f"{param}.file_id",
            code="unsupported_file_id",
        )
    filename = str(file.get("filename") or "")
    file_data = file.get("file_data")
    if not isinstance(file_data, str) or not file_data:
        raise InvalidDocument(
            "a file part needs file_data (a data URL or base64 with a filename); "
            + ("only a filename was sent" if filename else "it has none"),
            param=f"{param}.file_data",
        )
    match = _DATA_URL.match(file_data)
    start = match.end() if match else 0
    mime = (match.group("mime") or "").lower() if match else ""
    if match is None and file_data[:5].lower() == "data:":
        raise InvalidDocument(
            "file_data must be a base64 data URL (data:application/pdf;base64,...)",
            param=f"{param}.file_data",
        )
    if mime and mime not in _PDF_TYPES and mime not in TEXT_TYPES and not mime.startswith("text/"):
        raise InvalidDocument(
            f"file type {mime!r} is not supported; send a PDF or a text file "
            "(images go in image_url parts)",
            param=f"{param}.file_data",
        )
    if (len(file_data) - start) * 3 // 4 > max_bytes + 3:
        raise document_too_large(max_bytes, param)
    try:
        data = binascii.a2b_base64(file_data[start:], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDocument("file_data is not valid base64", param=f"{param}.file_data") from exc
    if not data:
        raise InvalidDocument("the file is empty (0 bytes)", param=param)
    return DocumentSource(data=data, name=filename or f"document-{index}", param=param)


def looks_like_image(data: bytes) -> bool:
    """Starts like an image file (the formats the decoder reads, HEIF/AVIF by `ftyp`)."""
    return data.startswith(_IMAGE_MAGIC) or b"ftyp" in data[4:12]


def is_document_upload(data: bytes, *, text: bool = True) -> bool:
    """A PDF, or (with `text`) anything that is not an image and decodes as UTF-8 text."""
    if b"%PDF-" in data[:1024]:
        return True
    if not text or not data or looks_like_image(data):
        return False
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample's end is still text.
        return exc.start >= len(data[:65536]) - 3 and len(data) > 65536
    return b"\x00" not in data[:65536]
