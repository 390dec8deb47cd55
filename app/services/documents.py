"""The documents of one chat request: found, read, and put in the messages as words.

`file` content parts (and uploaded documents, placed after the last user message's text)
become text parts holding the `<document>` markup of `app.prompt.documents`, before the
images are rewritten; so every preset and prompt format carries them the same way.

    seen = await read_documents(messages, uploads, reader, options, pages="1-5")
    seen.truncated, seen.documents
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.documents.pages import PageRanges, describe_ranges, parse_pages
from app.documents.reader import DocumentReader, DocumentText
from app.errors import InvalidRequest, first_proxy_error
from app.ingest.documents import DocumentSource, document_from_part
from app.prompt.documents import DocumentTemplates, DocumentWords, PageWords, render_documents
from app.prompt.rewrite import Message, append_to_last_user

# Sent to the client when the request's documents were cut at DOCUMENT_MAX_CHARS.
TRUNCATED_HEADER = "X-Clip-Proxy-Document-Truncated"


@dataclass(frozen=True)
class DocumentOptions:
    max_bytes: int = 50 * 1024 * 1024
    max_chars: int = 200_000
    max_documents: int = 16
    templates: DocumentTemplates = field(default_factory=DocumentTemplates)


@dataclass(frozen=True)
class DocumentsSeen:
    documents: list[DocumentText] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class UploadedDocumentPart:
    """A document the client uploaded, placed among the last user message's parts (internal,
    like `UploadedImagePart`)."""

    source: DocumentSource


def attach_document_uploads(messages: list[Message], uploads: Sequence[DocumentSource]) -> None:
    """Put the uploaded documents at the end of the last user message, after its text."""
    append_to_last_user(messages, [UploadedDocumentPart(source) for source in uploads])


async def read_documents(
    messages: list[Message],
    reader: DocumentReader,
    options: DocumentOptions,
    *,
    pages: str | None = None,
) -> DocumentsSeen:
    """Read every document part of `messages` and replace it with its words, in place."""
    found: list[tuple[int, int, DocumentSource]] = []
    for message_index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            if len(found) > options.max_documents:
                break  # counted enough to refuse: nothing past it is decoded
            if isinstance(part, UploadedDocumentPart):
                found.append((message_index, part_index, part.source))
            elif isinstance(part, dict) and part.get("type") == "file":
                param = f"messages[{message_index}].content[{part_index}].file"
                source = document_from_part(
                    part.get("file") or {}, len(found) + 1, options.max_bytes, param=param
                )
                found.append((message_index, part_index, source))
    if not found:
        return DocumentsSeen()
    if len(found) > options.max_documents:
        raise InvalidRequest(
            f"{len(found)} documents in one request; the limit is {options.max_documents}",
            param="messages",
            code="too_many_documents",
        )
    wanted = _wanted(pages)
    read: dict[int, DocumentText] = {}

    async def read_one(number: int, source: DocumentSource) -> None:
        read[number] = await reader.read(
            source.data, name=source.name, param=source.param, wanted=wanted
        )

    try:
        async with asyncio.TaskGroup() as group:
            for number, (_, _, source) in enumerate(found):
                group.create_task(read_one(number, source))
    except ExceptionGroup as errors:
        raise first_proxy_error(errors) from None
    documents = [read[number] for number in range(len(found))]
    blocks, truncated = render_documents(
        [_words(document) for document in documents],
        options.templates,
        max_chars=options.max_chars,
    )
    for (message_index, part_index, _), block in zip(found, blocks, strict=True):
        messages[message_index]["content"][part_index] = {"type": "text", "text": block}
    return DocumentsSeen(documents, truncated)


def _wanted(pages: str | None) -> PageRanges | None:
    if not pages:
        return None
    try:
        return parse_pages(pages)
    except ValueError as exc:
        raise InvalidRequest(
            f"clip_proxy.pages: {exc}", param="clip_proxy.pages", code="invalid_pages"
        ) from None


def _words(document: DocumentText) -> DocumentWords:
    return DocumentWords(
        name=document.name,
        page_count=document.page_count,
        pages=[PageWords(page.n, page.read, page.text) for page in document.pages],
        left_out=describe_ranges(document.left_out),
    )
