"""PDF extraction in a process of its own, one per document, at most `workers` at a time.

PDFium is not thread-safe, and a hostile file may hang it, loop in it or ask it for
gigabytes: each document is read by a fresh `python -m app.documents.child` under an
address-space cap, killed at the caller's deadline. Only that request fails. What comes
back is JSON (pictures as base64), never pickle: the child has parsed untrusted bytes.

    workers = ExtractionWorkers(workers=2, memory_bytes=2 * GiB)
    extraction = await workers.extract(data, wanted, max_pages, render)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from app.documents.extract import DocumentProblem, Extraction, Page, RenderLimits
from app.documents.pages import PageRanges

# The child's whole environment: it parses untrusted bytes, so it gets no secret (the
# upstream key, client keys) that a compromised PDFium could read.
_CHILD_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
# Past this, a child's answer is not read (pages are capped in characters and pixels).
MAX_ANSWER_BYTES = 1024 * 1024 * 1024


class WorkerCrashed(Exception):
    """The child died (out of memory, a crash in PDFium) without an answer."""


class ExtractionWorkers:
    def __init__(self, *, workers: int, memory_bytes: int) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._memory_bytes = memory_bytes

    async def extract(
        self, data: bytes, wanted: PageRanges | None, max_pages: int, render: RenderLimits
    ) -> Extraction:
        """The pages; `DocumentProblem` for a bad file, `WorkerCrashed` when the child died.
        Cancelled (the caller's deadline), the child is killed."""
        request = json.dumps(
            {
                "wanted": wanted,
                "max_pages": max_pages,
                "render": asdict(render),
                "memory_bytes": self._memory_bytes,
                "size": len(data),
            }
        ).encode()
        async with self._slots:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.documents.child",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={name: os.environ[name] for name in _CHILD_ENV if name in os.environ},
                limit=MAX_ANSWER_BYTES,
            )
            try:
                output = await _exchange(process, request, data)
            finally:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        try:
            answer = json.loads(output)
        except ValueError:
            raise WorkerCrashed(
                f"the PDF reader ended ({process.returncode}) without an answer"
            ) from None
        return _from_json(answer)


async def _exchange(process: asyncio.subprocess.Process, request: bytes, data: bytes) -> bytes:
    """Header and file in, answer out; the file is written as it is (no joined copy)."""
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(request + b"\n")
        process.stdin.write(data)
        await process.stdin.drain()
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child ended early; its answer (or its absence) says why
    output = bytearray()
    while chunk := await process.stdout.read(1024 * 1024):
        output += chunk
        if len(output) > MAX_ANSWER_BYTES:
            return b""  # not an answer a reader of capped pages writes
    await process.wait()
    return bytes(output)


def _from_json(answer: dict[str, Any]) -> Extraction:
    if "problem" in answer:
        code, message = answer["problem"]
        raise DocumentProblem(str(code), str(message))
    pages = [
        Page(
            n=int(page["n"]),
            text=str(page["text"]),
            image=base64.b64decode(page["image"]),
            note=str(page["note"]),
        )
        for page in answer["pages"]
    ]
    return Extraction(
        int(answer["page_count"]),
        pages,
        [int(n) for n in answer["left_out"]],
        peak_rss_kib=int(answer.get("peak_rss_kib", 0)),
    )
