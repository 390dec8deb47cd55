"""How a document reaches R1: words, under every preset.

    <document index="1" name="contract.pdf" pages="12" read="text:11,ocr:1">
    <page n="1">...</page>
    ...
    </document>

The markup is two templates (DOCUMENT_TEMPLATE, DOCUMENT_PAGE_TEMPLATE) with placeholders;
the text and the name are escaped like OCR text (`escape_text`), so a `</document>` inside the
file stays text. DOCUMENT_MAX_CHARS caps the documents of one request together: past it the
rest is cut, and the cut is said in the text.

    blocks, truncated = render_documents(docs, DocumentTemplates(), max_chars=200_000)
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from app.prompt.rewrite import escape_text

DOCUMENT_FIELDS = frozenset({"index", "name", "pages", "read", "content", "left_out"})
PAGE_FIELDS = frozenset({"n", "read", "text"})
_READ_ORDER = ["text", "ocr", "none"]


@dataclass(frozen=True)
class DocumentTemplates:
    document: str = (
        '<document index="{index}" name="{name}" pages="{pages}" read="{read}">\n'
        "{content}\n</document>"
    )
    page: str = '<page n="{n}">{text}</page>'


@dataclass(frozen=True)
class PageWords:
    n: int
    read: str  # text, ocr, none
    text: str


@dataclass(frozen=True)
class DocumentWords:
    """What the prompt says about one document; `pages` is 0 for a text file."""

    name: str
    page_count: int
    pages: Sequence[PageWords]
    left_out: str = ""  # "101-500": pages past DOCUMENT_MAX_PAGES


def check_template(template: str, allowed: frozenset[str]) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - allowed
    if unknown or "" in fields:
        raise ValueError(
            f"template {template!r}: unknown placeholder(s) {sorted(unknown)}; "
            f"use {', '.join('{' + name + '}' for name in sorted(allowed))}"
        )
    return template


def render_documents(
    documents: Sequence[DocumentWords], templates: DocumentTemplates, *, max_chars: int
) -> tuple[list[str], bool]:
    """One block per document, in order, and whether DOCUMENT_MAX_CHARS cut any text."""
    budget = max_chars
    truncated = False
    blocks = []
    for index, document in enumerate(documents, start=1):
        pages = []
        counts: dict[str, int] = {}
        for page in document.pages:
            counts[page.read] = counts.get(page.read, 0) + 1
            text = page.text
            if page.read == "none":
                text = f"[this page could not be read: {text}]"
            elif len(text) > budget:
                text = (
                    f"{text[:budget]}\n[... {len(text) - budget} more characters left out: "
                    "the request's documents are past DOCUMENT_MAX_CHARS]"
                )
                truncated = True
            budget = max(budget - len(page.text), 0)
            rendered = escape_text(text)
            if document.page_count:
                rendered = templates.page.format(n=page.n, read=page.read, text=rendered)
            pages.append(rendered)
        if not document.pages:
            pages.append(
                f"[none of the pages asked for (clip_proxy.pages) is among its "
                f"{document.page_count}]"
            )
        if document.left_out:
            pages.append(f"[pages {document.left_out} left out: past DOCUMENT_MAX_PAGES]")
        read = ",".join(f"{how}:{counts[how]}" for how in sorted(counts, key=_READ_ORDER.index))
        blocks.append(
            templates.document.format(
                index=index,
                name=escape_text(document.name).replace('"', "&quot;"),
                pages=document.page_count or 1,
                read=read,
                content="\n".join(pages),
                left_out=document.left_out,
            )
        )
    return blocks, truncated
