"""A document of a request -> its pages as words, each page cached by the file's content.

    reader = DocumentReader(options, workers, cache=page_cache, ocr=engine.read_page_image)
    document = await reader.read(data, name="contract.pdf", param="messages[0].content[1]")
    document.pages            # [PageText(n=1, read="text", text="..."), ...]

A PDF's page count and each page's text are cached under the file's SHA-256 (memory, then
Redis: the words cache's backends), so a conversation that sends the same PDF every turn has
it read once. Pages without a usable text layer come back from the worker as pictures and are
read by the engine's OCR pool (whose own cache holds them by the picture's content too).
Everything for one document runs under one deadline (DOCUMENT_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.documents.extract import (
    DocumentProblem,
    Extraction,
    RenderLimits,
    decode_text_file,
    is_pdf,
)
from app.documents.pages import PageRanges, select_pages
from app.documents.worker import ExtractionWorkers, WorkerCrashed
from app.errors import DocumentEncrypted, DocumentTimeout, InvalidDocument, ProxyError
from app.metrics import Metrics
from app.observability.request_context import note_stage

# (PNG bytes, param) -> the text in the picture.
ReadPicture = Callable[[bytes, str], Awaitable[str | None]]  # None: OCR is off


class PageCache(Protocol):
    async def get_or_compute(self, sha256: str, compute: Callable[[], Awaitable[str]]) -> str: ...


@dataclass(frozen=True)
class ReaderOptions:
    max_pages: int = 100
    timeout_s: float = 60.0
    render: RenderLimits = field(default_factory=RenderLimits)


@dataclass(frozen=True)
class PageText:
    n: int
    read: str  # "text", "ocr", or "none" (a page that could not be read: `text` says why)
    text: str


@dataclass(frozen=True)
class DocumentText:
    name: str
    kind: str  # "pdf" or "text"
    page_count: int  # 0 for a text file
    pages: list[PageText]
    left_out: list[int] = field(default_factory=list)  # (first, last) pairs, flat

    def read_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for page in self.pages:
            counts[page.read] = counts.get(page.read, 0) + 1
        return counts


class DocumentReader:
    def __init__(
        self,
        options: ReaderOptions,
        workers: ExtractionWorkers,
        *,
        cache: PageCache | None,
        ocr: ReadPicture,
        metrics: Metrics,
    ) -> None:
        self._options = options
        self._workers = workers
        self._cache = cache
        self._ocr = ocr
        self._metrics = metrics

    async def read(
        self, data: bytes, *, name: str, param: str, wanted: PageRanges | None = None
    ) -> DocumentText:
        if not data:
            raise InvalidDocument("the file is empty (0 bytes)", param=param)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._options.timeout_s):
                if is_pdf(data):
                    document = await self._read_pdf(data, name, param, wanted)
                else:
                    document = await self._read_text(data, name, param)
        except TimeoutError:
            raise DocumentTimeout(
                f"the document {name!r} was not read within {self._options.timeout_s:g} s",
                param=param,
            ) from None
        finally:
            elapsed = time.perf_counter() - started
            note_stage("document", elapsed)
        self._metrics.document_duration.observe(elapsed)
        return document

    async def _read_text(self, data: bytes, name: str, param: str) -> DocumentText:
        text = (
            await asyncio.to_thread(decode_text_file, data)
            if len(data) > 1 << 20
            else (decode_text_file(data))
        )
        if text is None:
            raise InvalidDocument(
                f"the file {name!r} is neither a PDF nor UTF-8 text; "
                "send PDFs, or text files encoded as UTF-8",
                param=param,
            )
        return DocumentText(name, "text", 0, [PageText(1, "text", text)])

    async def _read_pdf(
        self, data: bytes, name: str, param: str, wanted: PageRanges | None
    ) -> DocumentText:
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        extraction: asyncio.Task[Extraction] | None = None

        def extract() -> asyncio.Task[Extraction]:
            nonlocal extraction
            if extraction is None:
                extraction = asyncio.ensure_future(self._extract(data, param, wanted))
            return extraction

        async def count_pages() -> str:
            return str((await extract()).page_count)

        try:
            page_count = int(await self._cached(f"{sha256}:pages", count_pages))
            chosen, left_out = select_pages(page_count, wanted, self._options.max_pages)

            async def read_page(n: int) -> PageText:
                async def compute() -> str:
                    return await self._page_from(await extract(), n, param)

                encoded = await self._cached(f"{sha256}:{n}", compute)
                read, _, text = encoded.partition("\n")
                return PageText(n, read, text)

            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read_page(n)) for n in chosen]
        except* ProxyError as errors:
            raise errors.exceptions[0] from None
        finally:
            if extraction is not None and not extraction.done():
                extraction.cancel()
        return DocumentText(name, "pdf", page_count, [task.result() for task in tasks], left_out)

    async def _cached(self, key: str, compute: Callable[[], Awaitable[str]]) -> str:
        if self._cache is None:
            return await compute()
        return await self._cache.get_or_compute(key, compute)

    async def _extract(self, data: bytes, param: str, wanted: PageRanges | None) -> Extraction:
        try:
            return await self._workers.extract(
                data, wanted, self._options.max_pages, self._options.render
            )
        except DocumentProblem as exc:
            kind = DocumentEncrypted if exc.code == "document_encrypted" else InvalidDocument
            raise kind(exc.message, param=param) from None
        except WorkerCrashed as exc:
            raise InvalidDocument(
                "the PDF could not be read (its reader ran out of memory or crashed)", param=param
            ) from exc

    async def _page_from(self, extraction: Extraction, n: int, param: str) -> str:
        """One page as the cache stores it: how it was read, a newline, the text."""
        page = next((page for page in extraction.pages if page.n == n), None)
        if page is None or page.note:
            return f"none\n{page.note if page else 'the page was not read'}"
        if page.image:
            started = time.perf_counter()
            text = await self._ocr(page.image, f"{param} (page {n})")
            note_stage("ocr", time.perf_counter() - started)
            if text is None:
                return "none\nit has no text layer, and OCR is off on this proxy"
            self._metrics.document_pages.labels(read="ocr").inc()
            return f"ocr\n{text}"
        self._metrics.document_pages.labels(read="text").inc()
        return f"text\n{page.text}"
