"""List marks before a line's first word, found in its pixels: shapes drawn on small generated lines."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.marks import (
    BOX,
    DISC,
    FILLED_SQUARE,
    LARGE_DISC,
    SHADOWED_BOX,
    LineMark,
    leading_mark,
    line_marks,
    with_mark,
)

HEIGHT = 30  # a line crop at about 150 dpi
LETTER = 14  # the letters' height in it
TOP = 8  # where the letters start


def _line(width: int = 260) -> np.ndarray:
    return np.full((HEIGHT, width), 255, dtype=np.uint8)


def _letters(line: np.ndarray, start: int, count: int = 8) -> None:
    """Letter-like strokes: a few columns of ink each, LETTER tall, a small gap apart."""
    for i in range(count):
        x = start + i * 10
        line[TOP : TOP + LETTER, x : x + 3] = 0
        line[TOP + LETTER - 3 : TOP + LETTER, x : x + 7] = 0


def _with(draw_mark: str, size: int = LETTER, gap: int = 9) -> np.ndarray:
    line = _line()
    x, y = 6, TOP + (LETTER - size) // 2
    if draw_mark == "filled":
        line[y : y + size, x : x + size] = 0
    elif draw_mark in ("box", "shadowed"):
        line[y : y + size, x : x + size] = 0
        thick = 4 if draw_mark == "shadowed" else 1
        line[y + 1 : y + size - thick, x + 1 : x + size - thick] = 255
    elif draw_mark == "disc":
        rows, cols = np.ogrid[:size, :size]
        centre = (size - 1) / 2
        disc = (rows - centre) ** 2 + (cols - centre) ** 2 <= (size / 2) ** 2
        line[y : y + size, x : x + size][disc] = 0
    elif draw_mark == "ring":
        rows, cols = np.ogrid[:size, :size]
        centre = (size - 1) / 2
        distance = (rows - centre) ** 2 + (cols - centre) ** 2
        line[y : y + size, x : x + size][(distance <= (size / 2) ** 2) & (distance >= (size / 2 - 2) ** 2)] = 0
    _letters(line, x + size + gap)
    return line


@pytest.mark.parametrize(
    ("drawn", "size", "mark"),
    [
        ("filled", LETTER, FILLED_SQUARE),
        ("filled", 8, FILLED_SQUARE),
        ("box", LETTER, BOX),
        ("shadowed", LETTER, SHADOWED_BOX),
        ("disc", 6, DISC),
        ("disc", LETTER, LARGE_DISC),
    ],
)
def test_a_mark_before_the_first_word_is_named_by_its_shape(drawn: str, size: int, mark: str) -> None:
    assert leading_mark(_with(drawn, size)) == mark


def test_a_bgr_crop_reads_as_its_grey() -> None:
    line = _with("box")
    assert leading_mark(np.repeat(line[:, :, None], 3, axis=2)) == BOX


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(_with("ring"), id="a ring is a letter o, not a mark"),
        pytest.param(_with("filled", gap=1), id="no space after it: part of a word"),
        pytest.param(_with("filled", size=LETTER * 2), id="twice the letters' height: a figure"),
        pytest.param(_with("filled", size=3), id="a speck"),
    ],
)
def test_what_is_not_a_list_mark_is_not_named(line: np.ndarray) -> None:
    assert leading_mark(line) is None


def test_a_line_without_a_mark_has_none() -> None:
    line = _line()
    _letters(line, 6)
    assert leading_mark(line) is None


def test_a_bar_is_not_a_mark() -> None:
    line = _line()
    line[TOP : TOP + LETTER, 6:9] = 0  # an l or an I, then a space and a word
    _letters(line, 20)
    assert leading_mark(line) is None


def test_a_mark_that_is_followed_by_a_figure_is_not_a_mark() -> None:
    line = _line()
    line[TOP + 4 : TOP + 10, 6:12] = 0
    line[1 : HEIGHT - 2, 24:60] = 0  # a figure's shape, taller than any letter
    _letters(line, 70)
    assert leading_mark(line) is None


def test_faint_ink_is_ink_where_the_page_has_darker_text() -> None:
    line = _with("box")
    line[line == 0] = 140  # a grey box, as a scan renders a thin light outline...
    _letters(line, 29)  # ...before black text
    assert leading_mark(line) == BOX


def test_a_blank_or_flat_crop_has_no_mark() -> None:
    assert leading_mark(_line()) is None
    assert leading_mark(np.full((4, 40), 0, dtype=np.uint8)) is None


def _page_with_a_list() -> tuple[np.ndarray, list[np.ndarray]]:
    """A page: a left column whose line ends in a box-like letter close to the right column, and
    in the right column a list item whose square mark detection left out of its box."""
    page = np.full((200, 700), 255, dtype=np.uint8)
    y = 60
    # The left column's line; its last glyph is a box shape (an o in a square font).
    _letters(page[y : y + HEIGHT], 100, count=20)
    page[y + TOP : y + TOP + LETTER, 300 : 300 + LETTER] = 0
    page[y + TOP + 2 : y + TOP + LETTER - 2, 302 : 300 + LETTER - 2] = 255
    left_box = np.array([[95, y], [318, y], [318, y + HEIGHT], [95, y + HEIGHT]], dtype=np.float32)
    # The right column's list item: the mark at 340, its words from 363; the box starts at them.
    page[y + TOP : y + TOP + LETTER, 340 : 340 + LETTER] = 0
    _letters(page[y : y + HEIGHT], 363)
    right_box = np.array([[360, y], [450, y], [450, y + HEIGHT], [360, y + HEIGHT]], dtype=np.float32)
    # The same column's next line, starting close after the left column's box shape, unmarked.
    y2 = 120
    page[y2 + TOP : y2 + TOP + LETTER, 320 : 320 + LETTER] = 0
    page[y2 + TOP + 2 : y2 + TOP + LETTER - 2, 322 : 320 + LETTER - 2] = 255
    box_of_neighbour = np.array([[95, y2], [336, y2], [336, y2 + HEIGHT], [95, y2 + HEIGHT]], dtype=np.float32)
    _letters(page[y2 : y2 + HEIGHT], 363)
    unmarked = np.array([[360, y2], [450, y2], [450, y2 + HEIGHT], [360, y2 + HEIGHT]], dtype=np.float32)
    return page, [left_box, right_box, box_of_neighbour, unmarked]


def test_line_marks_finds_a_mark_outside_its_line_box_and_not_a_neighbours_letter() -> None:
    page, boxes = _page_with_a_list()
    marks = line_marks(page, boxes, [False] * len(boxes))
    assert marks == [None, LineMark(FILLED_SQUARE, "opens"), None, None]


def _box(x0: int, x1: int, y: int) -> np.ndarray:
    return np.array([[x0, y], [x1, y], [x1, y + HEIGHT], [x0, y + HEIGHT]], dtype=np.float32)


def test_a_mark_a_tab_before_its_line_is_found() -> None:
    # A hanging indent: the disc two line heights before the words, which detection boxed alone.
    page = np.full((100, 400), 255, dtype=np.uint8)
    rows, cols = np.ogrid[:7, :7]
    page[20 + TOP + 4 : 20 + TOP + 11, 40:47][(rows - 3) ** 2 + (cols - 3) ** 2 <= 12] = 0
    _letters(page[20 : 20 + HEIGHT], 100)
    assert line_marks(page, [_box(96, 190, 20)], [False]) == [LineMark(DISC, "opens")]


def test_a_mark_boxed_by_itself_goes_to_the_line_it_opens() -> None:
    page = np.full((100, 400), 255, dtype=np.uint8)
    page[20 + TOP : 20 + TOP + LETTER, 40 : 40 + LETTER] = 0
    _letters(page[20 : 20 + HEIGHT], 70)
    marks = line_marks(page, [_box(34, 60, 20), _box(66, 160, 20)], [False, False])
    assert marks == [LineMark(FILLED_SQUARE, "taken"), LineMark(FILLED_SQUARE, "opens")]


def test_a_mark_boxed_by_itself_with_no_line_after_it_stays() -> None:
    page = np.full((100, 400), 255, dtype=np.uint8)
    page[20 + TOP : 20 + TOP + LETTER, 40 : 40 + LETTER] = 0
    assert line_marks(page, [_box(34, 60, 20)], [False]) == [LineMark(FILLED_SQUARE, "alone")]


def test_line_marks_skips_the_lines_it_is_told_to() -> None:
    page, boxes = _page_with_a_list()
    assert line_marks(page, boxes, [True] * len(boxes)) == [None] * len(boxes)


@pytest.mark.parametrize(
    ("text", "mark", "want"),
    [
        ("Inspect wiper blades", BOX, "☐ Inspect wiper blades"),
        ("☐Inspect wiper blades", BOX, "☐ Inspect wiper blades"),  # the model's own mark is kept
        ("■ Rotate tires", BOX, "■ Rotate tires"),
        ("] Check the pads", SHADOWED_BOX, "❑ Check the pads"),  # a stray sign for the mark gives way
        ("(AWD) only", BOX, "☐ (AWD) only"),  # an opening bracket is text
        ("", FILLED_SQUARE, "■"),  # a mark boxed by itself
        ("■", BOX, "■"),
        ("Rotate tires", None, "Rotate tires"),
    ],
)
def test_with_mark_opens_the_text_with_one_mark_and_a_space(text: str, mark: str | None, want: str) -> None:
    assert with_mark(text, mark) == want
