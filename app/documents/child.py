"""The PDF reader's process (`python -m app.documents.child`), started by `worker.py`.

stdin: one JSON line (pages wanted, page cap, render limits, memory cap, size), then the
file's bytes. stdout: one JSON object, `{"page_count", "pages", "left_out"}` or
`{"problem": [code, message]}`.
"""

from __future__ import annotations

import base64
import json
import resource
import sys
from typing import Any

from app.documents.extract import DocumentProblem, RenderLimits, extract_pdf


def main() -> None:
    header = json.loads(sys.stdin.buffer.readline())
    memory_bytes = int(header["memory_bytes"])
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    data = sys.stdin.buffer.read(int(header["size"]))
    wanted = header["wanted"]
    answer: dict[str, Any]
    try:
        extraction = extract_pdf(
            data,
            tuple((int(first), int(last)) for first, last in wanted) if wanted else None,
            int(header["max_pages"]),
            RenderLimits(**header["render"]),
        )
        answer = {
            "page_count": extraction.page_count,
            "left_out": extraction.left_out,
            "pages": [
                {
                    "n": page.n,
                    "text": page.text,
                    "image": base64.b64encode(page.image).decode(),
                    "note": page.note,
                }
                for page in extraction.pages
            ],
        }
    except DocumentProblem as exc:
        answer = {"problem": [exc.code, exc.message]}
    except MemoryError:
        answer = {"problem": ["invalid_document", "the PDF needs more memory than allowed"]}
    except Exception as exc:  # PDFium on a file it cannot make sense of
        answer = {
            "problem": ["invalid_document", f"the PDF could not be read ({type(exc).__name__})"]
        }
    answer["peak_rss_kib"] = _peak_rss_kib()
    sys.stdout.buffer.write(json.dumps(answer).encode())
    sys.stdout.buffer.flush()


def _peak_rss_kib() -> int:
    """This process's RSS high-water mark since its exec (ru_maxrss would count the forked
    server's pages too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
