"""The page's layout rebuilt from the boxes of the recognised pieces (`OCR_LAYOUT=layout`).

A recogniser reads one line box at a time, so what a page looked like lives only in the
boxes: where a line starts (code's indentation), where the page's text stops for a gutter
(columns), where pieces line up in rows and columns (a table). Here:

- The page is de-skewed first (the median slope of its boxes), so a tilted photo of a page
  lays out like a straight one.
- It is cut recursively (an XY-cut): at a wide horizontal gap into blocks read top to
  bottom (a blank line between them), at a vertical gap that crosses every row into columns
  read one after the other. A region whose columns hold short pieces on two rows or more is
  a table: one line per row, its cells separated by ` | `.
- A line's indentation is its left edge against the left edge of its column, in spaces of
  the column's character width (box width over characters, wide CJK characters counting
  two): `    total += values[i];` keeps its four spaces.

    layout_text([(box, "def f():"), (box, "return 1")])   # "def f():\n    return 1"

Boxes are the four corners a detector gives (top-left, top-right, bottom-right,
bottom-left, in reading direction), in pixels.
"""

from __future__ import annotations

import itertools
import math
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A vertical gap between boxes wider than this many box heights parts two blocks.
BLOCK_GAP = 0.5
# A gap across every row wider than this many box heights parts two columns (a box of
# 12 px text is padded so much that a table's 2.5-character gutter left 0.45 of one).
COLUMN_GAP = 0.35
# Columns whose pieces hold at most this many characters (median) are a table's cells.
CELL_CHARS = 20
# A detector's box reaches past its text by about this many box heights, both sides
# together (DejaVu Sans Mono at 12-48 px, unclip ratio 2.0: 0.1-0.4).
PAD = 0.25
# Offsets (in characters) this close to the least are the left edge's level.
LEVEL_SPREAD = 0.6
# How far (in characters) an offset may lie from a multiple of four to count as one.
FOURS_SPREAD = 1.0
# Measured there too: how far (in characters) a short box's centre sits left of its text's.
SHORT_SHIFT = 0.2


@dataclass
class _Piece:
    x0: float
    x1: float
    y0: float
    y1: float
    text: str

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


def layout_text(pieces: Sequence[tuple[np.ndarray, str]]) -> str:
    """The pieces' text laid out as the page showed it; "" when there are none."""
    if not pieces:
        return ""
    placed = _deskew(pieces)
    return "\n".join(_region(placed, None)).strip("\n")


def _deskew(pieces: Sequence[tuple[np.ndarray, str]]) -> list[_Piece]:
    """Axis-aligned boxes in a frame turned by the page's median text slope."""
    angles: dict[bool, list[float]] = {True: [], False: []}
    for box, _ in pieces:
        run, rise = (float(value) for value in box[1] - box[0])
        height = float(np.linalg.norm(box[3] - box[0]))
        if run > height:
            angles[run > 2 * height].append(math.atan2(rise, run))
    # Long boxes say it best; a table of short cells has only short ones.
    chosen = angles[True] or angles[False]
    angle = statistics.median(chosen) if chosen else 0.0
    cos, sin = math.cos(angle), math.sin(angle)
    turn = np.array([[cos, -sin], [sin, cos]])  # row vectors times this: rotation by -angle
    placed = []
    for box, text in pieces:
        points = np.asarray(box, dtype=np.float64) @ turn
        xs, ys = points[:, 0], points[:, 1]
        edges = (float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max()))
        placed.append(_Piece(*edges, text))
    return placed


@dataclass(frozen=True)
class _Frame:
    """What a column's lines are indented against: its character metrics, the left edge of
    its leftmost lines (the mean of the text starts within `LEVEL_SPREAD` characters of the
    least, so one stray box does not shift the rest), and whether its indentation is in
    steps of four."""

    metrics: _Metrics
    left: float
    fours: bool

    @classmethod
    def of(cls, pieces: list[_Piece]) -> _Frame:
        metrics = _metrics(pieces)
        starts = [metrics.left(piece) for piece in pieces]
        least = min(starts)
        near = [start for start in starts if start - least <= LEVEL_SPREAD * metrics.width]
        left = statistics.mean(near)
        offsets = [(metrics.left(row[0]) - left) / metrics.width for row in _rows(pieces)]
        # Code indented by four spaces a level: a measured offset is off by up to one
        # character (a glyph's own margin, the width fitted from a few short lines), so
        # offsets that all lie within one of a multiple of four are taken as multiples.
        fours = any(offset >= 3 for offset in offsets) and all(
            abs(offset - 4 * round(offset / 4)) <= FOURS_SPREAD for offset in offsets
        )
        return cls(metrics, left, fours)

    def indent(self, piece: _Piece) -> int:
        offset = (self.metrics.left(piece) - self.left) / self.metrics.width
        spaces = 4 * round(offset / 4) if self.fours else round(offset)
        return max(spaces, 0)


def _region(pieces: list[_Piece], frame: _Frame | None) -> list[str]:
    """The region's lines; `frame` is what they are indented against (None: its own, as
    for the page or a column; the blocks of a column share the column's)."""
    unit = statistics.median(piece.height for piece in pieces)
    blocks = _split(pieces, vertical=True, gap=BLOCK_GAP * unit)
    if len(blocks) > 1:
        frame = frame or _Frame.of(pieces)
        out: list[str] = []
        for block in blocks:
            if out:
                out.append("")  # a blank line where the page left one
            out += _region(block, frame)
        return out
    rows = _rows(pieces)
    if len(rows) > 1:
        columns = _split(pieces, vertical=False, gap=COLUMN_GAP * unit)
        if len(columns) > 1:
            if _is_table(columns):
                return _table(rows, columns)
            out = []
            for column in columns:
                if out:
                    out.append("")
                out += _region(column, None)
            return out
    frame = frame or _Frame.of(pieces)
    return [_line(row, frame.indent(row[0]), frame.metrics) for row in rows]


def _split(pieces: list[_Piece], *, vertical: bool, gap: float) -> list[list[_Piece]]:
    """The pieces in groups parted by an empty band wider than `gap` (top to bottom when
    `vertical`, left to right otherwise)."""

    def span(piece: _Piece) -> tuple[float, float]:
        return (piece.y0, piece.y1) if vertical else (piece.x0, piece.x1)

    ordered = sorted(pieces, key=span)
    groups = [[ordered[0]]]
    reach = span(ordered[0])[1]
    for piece in ordered[1:]:
        start, end = span(piece)
        if start - reach > gap:
            groups.append([])
        groups[-1].append(piece)
        reach = max(reach, end)
    return groups


def _rows(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Lines top to bottom, pieces left to right: a piece joins the line whose centre lies
    within half a box height of its own."""
    rows: list[tuple[float, float, list[_Piece]]] = []
    for piece in sorted(pieces, key=lambda piece: piece.cy):
        for index, (cy, height, members) in enumerate(rows):
            if abs(piece.cy - cy) <= max(piece.height, height) / 2:
                members.append(piece)
                count = len(members)
                rows[index] = ((cy * (count - 1) + piece.cy) / count, height, members)
                break
        else:
            rows.append((piece.cy, piece.height, [piece]))
    rows.sort(key=lambda row: row[0])
    return [sorted(members, key=lambda piece: piece.x0) for _, _, members in rows]


def _is_table(columns: list[list[_Piece]]) -> bool:
    cells = [len(piece.text.strip()) for column in columns for piece in column]
    return statistics.median(cells) <= CELL_CHARS


def _table(rows: list[list[_Piece]], columns: list[list[_Piece]]) -> list[str]:
    edges = [(min(p.x0 for p in column), max(p.x1 for p in column)) for column in columns]

    def column_of(piece: _Piece) -> int:
        centre = (piece.x0 + piece.x1) / 2
        return min(range(len(edges)), key=lambda i: _distance(centre, edges[i]))

    lines = []
    for row in rows:
        cells: list[list[str]] = [[] for _ in edges]
        for piece in row:
            cells[column_of(piece)].append(piece.text.strip())
        lines.append(" | ".join(" ".join(cell) for cell in cells).strip())
    return lines


def _distance(x: float, edge: tuple[float, float]) -> float:
    return max(edge[0] - x, 0.0, x - edge[1])


def _columns_of(text: str) -> int:
    """Monospaced columns the text takes: East Asian wide characters count two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text.strip())


@dataclass(frozen=True)
class _Metrics:
    width: float  # of one character column
    pad: float  # how far a box reaches past its text, both sides together

    def left(self, piece: _Piece) -> float:
        """Where the piece's text starts. A box of one to three characters is padded
        more than a long one (a `}` by twice as much): its text is placed by its centre,
        which the detector puts about a third of a character left of the text's."""
        columns = _columns_of(piece.text)
        if columns <= 3:
            return (piece.x0 + piece.x1) / 2 - (columns / 2 - SHORT_SHIFT) * self.width
        return piece.x0 + self.pad / 2


def _metrics(pieces: list[_Piece]) -> _Metrics:
    """Character width and box padding of a region: box width = width x characters + pad,
    fitted over its pieces of eight characters or more (least squares; shorter ones are
    padded more and pulled the width 3% low), or from a typical padding of `PAD` box
    heights where their lengths do not differ enough to fit."""
    sized = [(_columns_of(p.text), p.x1 - p.x0, p.height) for p in pieces]
    long = [(n, w) for n, w, _ in sized if n >= 8]
    height = statistics.median(h for _, _, h in sized)
    if len(long) >= 2 and max(n for n, _ in long) - min(n for n, _ in long) >= 8:
        slope, intercept = np.polyfit([n for n, _ in long], [w for _, w in long], 1)
        if slope > 0 and 0 <= intercept <= 1.5 * height:
            return _Metrics(float(slope), float(intercept))
    chosen = long or [(max(n, 1), w) for n, w, _ in sized]
    pad = PAD * height
    width = statistics.median(max(w - pad, 1.0) / n for n, w in chosen)
    return _Metrics(max(width, 1.0), pad)


def _line(row: list[_Piece], indent: int, metrics: _Metrics) -> str:
    """One line: indented, its pieces parted by as many spaces as their gap holds
    characters (one at least)."""
    first = row[0]
    text = " " * indent + first.text.strip()
    for before, piece in itertools.pairwise(row):
        end = metrics.left(before) + _columns_of(before.text) * metrics.width
        gap = metrics.left(piece) - end
        text += " " * max(round(gap / metrics.width), 1) + piece.text.strip()
    return text
