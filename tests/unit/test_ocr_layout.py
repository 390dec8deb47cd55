"""The layout of OCR's pieces (app/engine/ocr_layout.py) on synthetic boxes: indentation,
blank lines, columns, tables, a tilted page. The same on rendered screenshots through a
real proxy: tests/proxy/test_ocr_layout.py."""

from __future__ import annotations

import math

import numpy as np

from app.engine.ocr import reading_order
from app.engine.ocr_layout import layout_text

CHAR = 12.0  # px per character, as DejaVu Sans Mono at 20 px
LINE = 30.0  # px between lines
HEIGHT = 29.0  # a detector's box height for 20 px text


def box(column: float, row: float, text: str, *, x: float = 20.0, y: float = 20.0) -> np.ndarray:
    """The box a detector gives for `text` starting `column` characters right of `x`, on
    line `row` below `y`: a few pixels of padding around the text."""
    left = x + column * CHAR - 3
    top = y + row * LINE
    right = x + (column + len(text)) * CHAR + 3
    return np.array(
        [[left, top], [right, top], [right, top + HEIGHT], [left, top + HEIGHT]], dtype=float
    )


def page(lines: list[str], **where: float) -> list[tuple[np.ndarray, str]]:
    """One piece per non-empty line, placed at its own indentation."""
    return [
        (box(len(line) - len(line.lstrip()), row, line.strip(), **where), line.strip())
        for row, line in enumerate(lines)
        if line.strip()
    ]


def tilted(pieces: list[tuple[np.ndarray, str]], degrees: float) -> list[tuple[np.ndarray, str]]:
    angle = math.radians(degrees)
    turn = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    return [(points @ turn, text) for points, text in pieces]


CODE = [
    "class Cache:",
    "    def get(self, key):",
    "        if key in self.items:",
    "            return self.items[key]",
    "        return None",
    "}",
]


def test_code_keeps_its_indentation_line_by_line() -> None:
    assert layout_text(page(CODE)).split("\n") == CODE


def test_indentation_counts_from_the_text_not_the_image_edge() -> None:
    shifted = page(CODE, x=400.0)
    assert layout_text(shifted).split("\n") == CODE


def test_a_tilted_screenshot_keeps_its_indentation() -> None:
    for degrees in (-5.0, 5.0):
        assert layout_text(tilted(page(CODE), degrees)).split("\n") == CODE, degrees


def test_a_blank_line_inside_code_stays_and_the_indentation_after_it_too() -> None:
    lines = ["def f():", "    x = compute()", "", "    return x"]
    assert layout_text(page(lines)).split("\n") == lines


def test_plain_reading_order_is_todays_output() -> None:
    assert reading_order(page(CODE)) == "\n".join(line.strip() for line in CODE)


def test_two_columns_are_read_one_after_the_other() -> None:
    left = ["The new release brings", "faster start-up times", "and a smaller memory"]
    right = ["Upgrading is simple:", "stop the service, install", "the package again."]
    pieces = page(left) + page(right, x=20.0 + 30 * CHAR)

    text = layout_text(pieces)

    assert text.split("\n") == [*left, "", *right]


def test_a_table_keeps_one_line_per_row_with_cells_separated() -> None:
    rows = [["Host", "Port", "Status"], ["db-1", "5432", "up"], ["cache", "6379", "down"]]
    starts = [0, 10, 18]  # character columns of the three table columns
    pieces = [
        (box(start, number, cell), cell)
        for number, row in enumerate(rows)
        for start, cell in zip(starts, row, strict=True)
    ]

    assert layout_text(pieces).split("\n") == [" | ".join(row) for row in rows]


def test_pieces_of_one_line_keep_a_wide_gap_as_spaces() -> None:
    pieces = [(box(0, 0, "x = 1"), "x = 1"), (box(12, 0, "# one"), "# one")]
    assert layout_text(pieces) == "x = 1       # one"


def test_wide_characters_count_two_columns() -> None:
    # Chinese characters are as wide as two Latin ones: the indent is in Latin spaces.
    title, text = "项目进度讨论会议记录", "数据库连接失败"
    # Boxes as wide as the Latin text of twice as many characters.
    wide = [(box(0, 0, "x" * 2 * len(title)), title), (box(4, 1, "x" * 2 * len(text)), text)]
    assert layout_text(wide).split("\n") == [title, "    " + text]


def test_nothing_read_is_empty_text() -> None:
    assert layout_text([]) == ""


def test_any_boxes_give_every_piece_once() -> None:
    """Random boxes (tilted, overlapping, tiny, huge): each piece's text comes out once."""
    random = np.random.default_rng(27)
    for _ in range(300):
        count = int(random.integers(1, 30))
        pieces = []
        for number in range(count):
            x, y = random.uniform(0, 800, 2)
            width, height = random.uniform(1, 400), random.uniform(1, 60)
            points = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]])
            angle = math.radians(random.uniform(-10, 10))
            turn = np.array(
                [[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]]
            )
            pieces.append((points @ turn, f"w{number}"))

        text = layout_text(pieces)

        words = text.replace("|", " ").split()
        assert sorted(words) == sorted(f"w{number}" for number in range(count)), text
