"""Reading order for a page's text layer: two columns read one after the other.

PDFium gives text in content-stream order, and joins pieces that sit on one baseline into
one line. A page whose writer laid out two columns line by line across the page (left
line, right line, ...) then reads as interleaved halves. When the page's text runs leave a
vertical gutter in its middle (no run crosses it, long runs on both sides, side by side),
each stretch between full-width runs (titles, figures' captions) is read left column first,
then right; otherwise the content order stands.

    text = ordered_text(textpage, page_width)
"""

from __future__ import annotations

from typing import Any

Rect = tuple[float, float, float, float]  # left, bottom, right, top (PDF points)

# A run at least this share of the page wide is full-width (a title), not a column's.
WIDE = 0.6
MIN_RUNS_PER_SIDE = 3


def ordered_text(textpage: Any, page_width: float) -> str:
    count = textpage.count_rects()
    if count < 2 * MIN_RUNS_PER_SIDE:
        return str(textpage.get_text_range())
    rects: list[Rect] = [tuple(textpage.get_rect(index)) for index in range(count)]
    gutter = find_gutter(rects, page_width)
    if gutter is None:
        return str(textpage.get_text_range())
    lines: list[str] = []
    left: list[Rect] = []
    right: list[Rect] = []

    def flush() -> None:
        for column in (left, right):
            lines.extend(_lines(textpage, column))
            column.clear()

    for rect in sorted(rects, key=lambda rect: (-rect[3], rect[0])):
        if rect[2] <= gutter:
            left.append(rect)
        elif rect[0] >= gutter:
            right.append(rect)
        else:  # across the gutter: a title or a caption ends the stretch above it
            flush()
            lines.extend(_lines(textpage, [rect]))
    flush()
    return "\n".join(lines)


def find_gutter(rects: list[Rect], page_width: float) -> float | None:
    """The middle of the widest vertical strip in the page's middle half that no column run
    crosses, when long runs sit side by side on both sides of it; else None."""
    body = [rect for rect in rects if rect[2] - rect[0] < WIDE * page_width]
    low, high = 0.25 * page_width, 0.75 * page_width
    covered = sorted((max(rect[0], low), min(rect[2], high)) for rect in body)
    best: tuple[float, float] | None = None
    cursor = low
    for start, end in covered:
        if start > cursor and (best is None or start - cursor > best[1] - best[0]):
            best = (cursor, start)
        cursor = max(cursor, end)
    if high > cursor and (best is None or high - cursor > best[1] - best[0]):
        best = (cursor, high)
    if best is None or best[1] - best[0] < 6:  # narrower than a wide space: no gutter
        return None
    gutter = (best[0] + best[1]) / 2
    left = [rect for rect in body if rect[2] <= gutter]
    right = [rect for rect in body if rect[0] >= gutter]
    if len(left) < MIN_RUNS_PER_SIDE or len(right) < MIN_RUNS_PER_SIDE:
        return None
    # Columns of prose, not a table's cells: most runs fill much of their column.
    if _median_fill(left, min(r[0] for r in left), gutter) < 0.5:
        return None
    if _median_fill(right, gutter, max(r[2] for r in right)) < 0.5:
        return None
    # Side by side: the two columns share most of their height.
    overlap = min(max(r[3] for r in left), max(r[3] for r in right)) - max(
        min(r[1] for r in left), min(r[1] for r in right)
    )
    shorter = min(
        max(r[3] for r in left) - min(r[1] for r in left),
        max(r[3] for r in right) - min(r[1] for r in right),
    )
    return gutter if shorter > 0 and overlap >= 0.5 * shorter else None


def _median_fill(rects: list[Rect], start: float, end: float) -> float:
    widths = sorted(rect[2] - rect[0] for rect in rects)
    return widths[len(widths) // 2] / max(end - start, 1.0)


def _lines(textpage: Any, rects: list[Rect]) -> list[str]:
    """Runs top to bottom; runs on one baseline (within half a height) joined left to right."""
    lines: list[list[Rect]] = []
    for rect in sorted(rects, key=lambda rect: -rect[3]):
        height = rect[3] - rect[1]
        if lines and abs(lines[-1][0][3] - rect[3]) <= height / 2:
            lines[-1].append(rect)
        else:
            lines.append([rect])
    return [
        " ".join(
            str(textpage.get_text_bounded(left, bottom, right, top)).strip()
            for left, bottom, right, top in sorted(line)
        )
        for line in lines
    ]
