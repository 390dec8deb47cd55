"""Which pages of a document to read: a client's `"pages": "1-5,9"` and the page cap.

wanted = parse_pages("1-5,9")                # ((1, 5), (9, 9))
chosen, left_out = select_pages(12, wanted, max_pages=100)   # [1..5, 9], []
"""

from __future__ import annotations

import re

PageRanges = tuple[tuple[int, int], ...]

_RANGE = re.compile(r"^\s*(\d{1,7})\s*(?:-\s*(\d{1,7})?\s*)?$")
MAX_RANGES = 64


def parse_pages(spec: str) -> PageRanges:
    """`"1-5,9,12-"`: 1-based, inclusive; an open end runs to the last page. ValueError
    with a readable message otherwise."""
    ranges: list[tuple[int, int]] = []
    pieces = spec.split(",")
    if len(pieces) > MAX_RANGES:
        raise ValueError(f"at most {MAX_RANGES} page ranges")
    for piece in pieces:
        match = _RANGE.match(piece)
        if match is None:
            raise ValueError(f"{piece.strip()!r} is not a page or a range like 1-5")
        first = int(match.group(1))
        open_end = match.group(2) is None and "-" in piece
        last = 10**9 if open_end else int(match.group(2) or first)
        if first < 1 or last < first:
            raise ValueError(f"{piece.strip()!r}: pages count from 1, first to last")
        ranges.append((first, last))
    return tuple(ranges)


def select_pages(
    page_count: int, wanted: PageRanges | None, max_pages: int
) -> tuple[list[int], list[int]]:
    """The pages to read (ascending, at most `max_pages`) and, as ranges' bounds flattened
    to (first, last) pairs, those asked for but left out by the cap."""
    if wanted:
        chosen: set[int] = set()
        for first, last in wanted:
            chosen.update(range(first, min(last, page_count) + 1))
        pages = sorted(chosen)
    else:
        pages = list(range(1, page_count + 1))
    return pages[:max_pages], _as_ranges(pages[max_pages:])


def _as_ranges(pages: list[int]) -> list[int]:
    """[7, 8, 9, 12] -> [7, 9, 12, 12]: (first, last) pairs, flat."""
    bounds: list[int] = []
    for page in pages:
        if bounds and bounds[-1] == page - 1:
            bounds[-1] = page
        else:
            bounds += [page, page]
    return bounds


def describe_ranges(bounds: list[int]) -> str:
    """[7, 9, 12, 12] -> "7-9,12"."""
    return ",".join(
        str(first) if first == last else f"{first}-{last}"
        for first, last in zip(bounds[::2], bounds[1::2], strict=True)
    )
