"""Reading order on hand-made boxes: one column, two columns, a table, a title over two columns."""

from __future__ import annotations

import random

from consumer.layout import blocks_to_text, order_blocks
from schemas.messages import Block

LINE = 0.02  # line height as a page fraction
LEADING = 0.03  # baseline to baseline


def box(text: str, x0: float, y0: float, x1: float, height: float = LINE) -> Block:
    return Block(text=text, bbox=(x0, y0, x1, y0 + height), confidence=0.9)


def column(prefix: str, x0: float, x1: float, top: float, lines: int) -> list[Block]:
    """Lines of text filling a column, named prefix1, prefix2, ..."""
    return [box(f"{prefix}{i}", x0, top + i * LEADING, x1 - (0.05 if i % 4 == 3 else 0)) for i in range(1, lines + 1)]


def shuffled(blocks: list[Block]) -> list[Block]:
    out = list(blocks)
    random.Random(7).shuffle(out)
    return out


def texts(lines: list[list[Block]]) -> list[str]:
    return [" ".join(b.text for b in line) for line in lines]


def test_one_column_reads_top_to_bottom() -> None:
    blocks = column("L", 0.1, 0.9, 0.1, 10)
    assert texts(order_blocks(shuffled(blocks))) == [f"L{i}" for i in range(1, 11)]


def test_words_of_a_line_join_left_to_right() -> None:
    # Given a line the engine found as three boxes, slightly off level (a skewed scan)
    blocks = [box("world", 0.3, 0.101, 0.45), box("Hello", 0.1, 0.1, 0.28), box("again", 0.47, 0.103, 0.6)]
    blocks.append(box("Next line", 0.1, 0.13, 0.4))
    assert blocks_to_text(blocks) == "Hello world again\nNext line"


def test_two_columns_read_left_column_first() -> None:
    # Lines of both columns sit level with each other: the engine's own order interleaves them.
    left = column("L", 0.08, 0.48, 0.1, 20)
    right = column("R", 0.52, 0.92, 0.1, 20)
    interleaved = [b for pair in zip(left, right, strict=True) for b in pair]
    lines = texts(order_blocks(interleaved))
    assert lines == [f"L{i}" for i in range(1, 21)] + [f"R{i}" for i in range(1, 21)]


def test_two_columns_with_a_narrow_gutter_and_padded_boxes() -> None:
    # OCR boxes are padded: the gutter between the boxes is only 0.004 of the page wide.
    left = column("L", 0.07, 0.496, 0.1, 15)
    right = column("R", 0.5, 0.9, 0.1, 15)
    lines = texts(order_blocks(shuffled(left + right)))
    assert lines == [f"L{i}" for i in range(1, 16)] + [f"R{i}" for i in range(1, 16)]


def test_title_spanning_both_columns_comes_first() -> None:
    title = box("Title across the page", 0.08, 0.05, 0.7, height=0.03)
    left = column("L", 0.08, 0.48, 0.1, 12)
    right = column("R", 0.52, 0.92, 0.1, 12)
    lines = texts(order_blocks(shuffled([title, *left, *right])))
    assert lines == ["Title across the page"] + [f"L{i}" for i in range(1, 13)] + [f"R{i}" for i in range(1, 13)]


def test_spanning_block_between_two_column_sections() -> None:
    # Two columns, a figure caption across the page, then two columns again.
    top = column("A", 0.08, 0.48, 0.05, 6) + column("B", 0.52, 0.92, 0.05, 6)
    caption = box("Figure 1: across both columns", 0.2, 0.3, 0.8)
    bottom = column("C", 0.08, 0.48, 0.32, 6) + column("D", 0.52, 0.92, 0.32, 6)
    lines = texts(order_blocks(shuffled([*top, caption, *bottom])))
    expected = [f"A{i}" for i in range(1, 7)] + [f"B{i}" for i in range(1, 7)]
    expected += ["Figure 1: across both columns"]
    expected += [f"C{i}" for i in range(1, 7)] + [f"D{i}" for i in range(1, 7)]
    assert lines == expected


def test_three_columns() -> None:
    cols = [column(p, x0, x0 + 0.27, 0.1, 8) for p, x0 in (("A", 0.05), ("B", 0.36), ("C", 0.67))]
    lines = texts(order_blocks(shuffled([b for c in cols for b in c])))
    assert lines == [f"{p}{i}" for p in "ABC" for i in range(1, 9)]


def test_table_reads_row_by_row() -> None:
    # Six narrow columns of cells, level in rows: a table, not six text columns.
    xs = [(0.08, 0.2), (0.23, 0.42), (0.45, 0.5), (0.55, 0.65), (0.68, 0.8), (0.83, 0.95)]
    rows = []
    for r in range(12):
        rows.append(
            [
                box(f"r{r}c{c}", x0, 0.1 + r * LEADING, x1 - (0.03 * (r % 3) if c == 1 else 0))
                for c, (x0, x1) in enumerate(xs)
            ]
        )
    lines = texts(order_blocks(shuffled([b for row in rows for b in row])))
    assert lines == [" ".join(f"r{r}c{c}" for c in range(6)) for r in range(12)]


def test_key_value_rows_are_not_columns() -> None:
    # Short labels on the left, values on the right: labels do not fill a column.
    blocks = []
    for i in range(8):
        blocks.append(box(f"key{i}:", 0.1, 0.1 + i * LEADING, 0.16 + 0.02 * (i % 3)))
        blocks.append(box(f"value{i}", 0.5, 0.1 + i * LEADING, 0.9))
    lines = texts(order_blocks(shuffled(blocks)))
    assert lines == [f"key{i}: value{i}" for i in range(8)]


def test_paragraph_gap_becomes_blank_line() -> None:
    blocks = [box("First paragraph line one", 0.1, 0.1, 0.9), box("line two", 0.1, 0.13, 0.5)]
    blocks.append(box("Second paragraph", 0.1, 0.2, 0.9))  # a gap of 2.5 line heights
    assert blocks_to_text(blocks) == "First paragraph line one\nline two\n\nSecond paragraph"


def test_column_jump_is_not_a_paragraph_break() -> None:
    left = column("L", 0.08, 0.48, 0.1, 6)
    right = column("R", 0.52, 0.92, 0.1, 6)
    text = blocks_to_text(left + right)
    assert "\n\n" not in text
    assert text.split("\n") == [f"L{i}" for i in range(1, 7)] + [f"R{i}" for i in range(1, 7)]


def test_empty_and_blank_blocks() -> None:
    assert order_blocks([]) == []
    assert blocks_to_text([]) == ""
    assert blocks_to_text([box("  ", 0.1, 0.1, 0.2), box("x", 0.1, 0.2, 0.2)]) == "x"


def test_a_few_side_by_side_lines_are_not_columns() -> None:
    # Two lines next to each other (a signature block) read as lines, left to right.
    blocks = [box("Signed A", 0.1, 0.8, 0.3), box("Signed B", 0.6, 0.8, 0.8)]
    blocks += [box("Name A", 0.1, 0.83, 0.3), box("Name B", 0.6, 0.83, 0.8)]
    assert blocks_to_text(blocks) == "Signed A Signed B\nName A Name B"
