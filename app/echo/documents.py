"""What the echo upstream says about the documents it received: the proxy's `<document>`
blocks (app/prompt/documents.py, default templates), found in any message.

    for found in received_documents(messages): found.line()
    # 'document 1: "contract.pdf", 12 pages, read text:11,ocr:1, 23,456 characters.'
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DOCUMENT = re.compile(
    r'<document index="(?P<index>\d+)" name="(?P<name>[^"]*)" pages="(?P<pages>\d+)" '
    r'read="(?P<read>[^"]*)">\n(?P<body>.*?)\n</document>',
    re.S,
)
_PAGE_TAG = re.compile(r'</?page(?: n="\d+")?>')


@dataclass(frozen=True)
class ReceivedDocument:
    name: str
    pages: int
    read: str
    chars: int  # of its text, markup left out

    def line(self, number: int) -> str:
        plural = "" if self.pages == 1 else "s"
        return (
            f"document {number}: {self.name!r}, {self.pages} page{plural}, "
            f"read {self.read}, {self.chars:,} characters."
        )


def received_documents(messages: Iterable[Any]) -> list[ReceivedDocument]:
    found = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            texts = [str(part.get("text", "")) for part in content if isinstance(part, dict)]
        for text in texts:
            for match in DOCUMENT.finditer(text):
                body = html.unescape(_PAGE_TAG.sub("", match["body"]))
                found.append(
                    ReceivedDocument(
                        name=html.unescape(match["name"]),
                        pages=int(match["pages"]),
                        read=match["read"],
                        chars=len(body),
                    )
                )
    return found
