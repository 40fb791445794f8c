"""Reading order on hand-made boxes: one column, two columns, a table, a title over two columns; rotation; merging."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from consumer.layout import (
    _sparse_strips,
    blocks_to_text,
    detect_rotation,
    layer_order,
    merge_blocks,
    order_blocks,
    rotate_box,
)
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


def test_skewed_full_width_lines_are_not_merged() -> None:
    # On a skewed scan a full-width line's box is taller than the line and overlaps the next by most
    # of its height; side by side they are not, so they stay two lines (scanned_noisy.pdf page 16).
    first = Block(text="Any litigation relating", bbox=(0.10, 0.100, 0.90, 0.135), confidence=0.99)
    second = Block(text="defendant maintains", bbox=(0.10, 0.108, 0.88, 0.143), confidence=0.99)
    assert texts(order_blocks([second, first])) == ["Any litigation relating", "defendant maintains"]


# --- rotation -------------------------------------------------------------------------


def _lines(n: int, confidence: float, *, tall: bool = False) -> list[Block]:
    """n lines of text; ``tall``: running down the page (narrow, tall boxes)."""
    if tall:
        return [
            Block(text=f"line {i}", bbox=(0.1 + 0.05 * i, 0.1, 0.13 + 0.05 * i, 0.9), confidence=confidence)
            for i in range(n)
        ]
    return [
        Block(text=f"line {i}", bbox=(0.1, 0.1 + 0.05 * i, 0.9, 0.12 + 0.05 * i), confidence=confidence)
        for i in range(n)
    ]


def test_upright_confident_page_needs_no_second_reading() -> None:
    assert detect_rotation(_lines(10, 0.99), 1275, 1650) == ()


def test_sideways_page_tries_both_quarter_turns() -> None:
    assert detect_rotation(_lines(10, 0.7, tall=True), 1650, 1275) == (90, 270)


def test_tall_boxes_of_single_digits_are_not_sideways_lines() -> None:
    digits = [
        Block(text=str(i % 10), bbox=(0.1 + 0.02 * i, 0.1, 0.11 + 0.02 * i, 0.12), confidence=0.99) for i in range(20)
    ]
    assert detect_rotation(digits + _lines(3, 0.99), 1275, 1650) == ()


def test_horizontal_lines_read_poorly_may_be_upside_down() -> None:
    assert detect_rotation(_lines(10, 0.7), 1275, 1650) == (180,)


def test_nothing_read_is_not_judged() -> None:
    assert detect_rotation([], 1275, 1650) == ()
    assert detect_rotation(_lines(3, 0.9), 0, 0) == ()


def test_rotate_box_maps_back_to_the_turned_page() -> None:
    top_left = (0.1, 0.0, 0.3, 0.1)  # a box at the top left of the upright image
    # Text turned 90 degrees clockwise: the top left of the text is at the top right of the page.
    assert rotate_box(top_left, 90) == pytest.approx((0.9, 0.1, 1.0, 0.3))
    assert rotate_box(top_left, 180) == pytest.approx((0.7, 0.9, 0.9, 1.0))
    assert rotate_box(top_left, 270) == pytest.approx((0.0, 0.7, 0.1, 0.9))
    assert rotate_box(top_left, 0) == top_left
    with pytest.raises(ValueError, match="rotation"):
        rotate_box(top_left, 45)


# --- merging a text layer with OCR ----------------------------------------------------------


def test_merge_keeps_the_layer_and_adds_only_what_it_lacks() -> None:
    layer = [box("Invoice 2024-001", 0.1, 0.05, 0.5), box("Dear customer,", 0.1, 0.10, 0.4)]
    ocr = [
        Block(text="Invoice 2024-00l", bbox=(0.099, 0.049, 0.51, 0.071), confidence=0.9),  # the layer's line read again
        box("Scanned receipt total 12.50", 0.1, 0.50, 0.7),
    ]
    merged = merge_blocks(layer, ocr)
    assert [b.text for b in merged] == ["Invoice 2024-001", "Dear customer,", "Scanned receipt total 12.50"]


# --- the reading-order convention, rule by rule ----------------------------------------


def prose(prefix: str, x0: float, x1: float, top: float, lines: int, height: float = LINE) -> list[Block]:
    """Lines of a column of text as an engine reads them: long lines filling the column."""
    return [
        Block(
            text=f"{prefix}{i} words of a line of text in a column",
            bbox=(x0, top + i * LEADING, x1 - (0.05 if i % 5 == 4 else 0), top + i * LEADING + height),
            confidence=0.9,
        )
        for i in range(1, lines + 1)
    ]


def heads(lines: list[list[Block]]) -> list[str]:
    """The first word of each line: its name."""
    return [line[0].text.split()[0] for line in lines]


def names(prefix: str, lines: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(1, lines + 1)]


def test_full_width_block_breaks_the_columns() -> None:
    # Given two columns, a full-width block, and two columns again
    top = prose("A", 0.08, 0.48, 0.05, 6) + prose("B", 0.52, 0.92, 0.05, 6)
    block = [box("Wide block across the page, a figure caption", 0.08, 0.3, 0.92)]
    bottom = prose("C", 0.08, 0.48, 0.32, 6) + prose("D", 0.52, 0.92, 0.32, 6)
    # When ordered, what is above the block is read before it, what is below after
    lines = heads(order_blocks(shuffled([*top, *block, *bottom])))
    assert lines == names("A", 6) + names("B", 6) + ["Wide"] + names("C", 6) + names("D", 6)


def test_three_columns_of_text_under_a_title() -> None:
    title = [box("Title over three columns", 0.2, 0.02, 0.8, height=0.03)]
    cols = prose("A", 0.05, 0.32, 0.08, 10) + prose("B", 0.36, 0.63, 0.08, 10) + prose("C", 0.67, 0.94, 0.08, 10)
    lines = heads(order_blocks(shuffled(title + cols)))
    assert lines == ["Title", *names("A", 10), *names("B", 10), *names("C", 10)]


def test_table_beside_nothing_reads_row_by_row_under_its_heading() -> None:
    heading = [box("Table 1: results of the runs", 0.1, 0.05, 0.6)]
    cells = [
        box(f"r{r}c{c}", x0, 0.1 + r * LEADING, x0 + 0.08)
        for r in range(6)
        for c, x0 in enumerate((0.1, 0.3, 0.5, 0.7))
    ]
    lines = texts(order_blocks(shuffled(heading + cells)))
    assert lines == ["Table 1: results of the runs"] + [" ".join(f"r{r}c{c}" for c in range(4)) for r in range(6)]


def test_running_head_first_and_page_number_last() -> None:
    # A page number centred under two columns crosses their gutter; a running head sits over the right column.
    head = [box("JOURNAL OF THINGS 2020", 0.6, 0.02, 0.9, height=0.015)]
    cols = prose("L", 0.08, 0.48, 0.08, 12) + prose("R", 0.52, 0.92, 0.08, 12)
    number = [box("17", 0.49, 0.95, 0.51, height=0.015)]
    lines = heads(order_blocks(shuffled(number + cols + head)))
    assert lines == ["JOURNAL", *names("L", 12), *names("R", 12), "17"]


def test_footnote_at_the_foot_of_a_column_is_read_with_that_column() -> None:
    left = prose("L", 0.08, 0.48, 0.05, 12)
    note = prose("N", 0.08, 0.48, 0.05 + 14 * LEADING, 2, height=0.014)
    right = prose("R", 0.52, 0.92, 0.05, 16)
    lines = heads(order_blocks(shuffled(left + note + right)))
    assert lines == names("L", 12) + names("N", 2) + names("R", 16)


def test_margin_notes_after_the_body() -> None:
    body = prose("B", 0.2, 0.75, 0.1, 20)
    notes = [box("A note in the margin", 0.8, 0.2, 0.95), box("and its second line", 0.8, 0.23, 0.95)]
    notes += [box("Another note", 0.8, 0.5, 0.95)]
    lines = heads(order_blocks(shuffled(body + notes)))
    assert lines == [*names("B", 20), "A", "and", "Another"]


def test_rotated_margin_text_is_kept_last() -> None:
    # An arXiv stamp up the left margin: a box much taller than wide.
    stamp = [box("arXiv:2004.04906v3 [cs.CL] 30 Sep 2020", 0.02, 0.3, 0.05, height=0.4)]
    cols = prose("L", 0.1, 0.48, 0.1, 10) + prose("R", 0.52, 0.92, 0.1, 10)
    lines = heads(order_blocks(shuffled(stamp + cols)))
    assert lines == [*names("L", 10), *names("R", 10), "arXiv:2004.04906v3"]


def test_block_straddling_two_columns_is_read_by_its_left_edge() -> None:
    # A heading from the left edge of the first column reaching into the second is read in the first;
    # a caption starting inside the second column and reaching into the third is read after the second.
    heading = [box("Heading over the first column", 0.05, 0.04, 0.45, height=0.025)]
    cols = prose("A", 0.05, 0.32, 0.08, 12) + prose("B", 0.36, 0.63, 0.08, 12) + prose("C", 0.67, 0.94, 0.08, 12)
    # The caption sits beside short lines of the second column (they wrap round a figure) ...
    cols = [b if not (b.text.startswith("B") and b.bbox[1] < 0.3) else box(b.text, 0.36, b.bbox[1], 0.45) for b in cols]
    caption = [box("Figure caption", 0.5, 0.2, 0.75)]
    lines = heads(order_blocks(shuffled(heading + cols + caption)))
    assert lines == ["Heading", *names("A", 12), *names("B", 12), "Figure", *names("C", 12)]


def test_a_mark_boxed_apart_inside_its_words_box_is_read_on_that_line() -> None:
    # Given an author line whose box takes in the name's superscript, which OCR also boxed on its
    # own: smaller, a little above the baseline, and inside the name's box
    name = box("Jingfeng Yang", 0.28, 0.125, 0.43, height=0.02)
    mark = box("*", 0.40, 0.1235, 0.41, height=0.007)
    others = [
        box("Aditya Gupta†", 0.42, 0.125, 0.56, height=0.02),
        box("Shyam Upadhyay†", 0.57, 0.1275, 0.74, height=0.02),
    ]
    below = box("Georgia Institute of Technology", 0.37, 0.16, 0.64, height=0.02)
    # When ordered, the mark is read on the name's line, after the name, and the line holds together
    lines = texts(order_blocks(shuffled([name, mark, *others, below])))
    assert lines == ["Jingfeng Yang * Aditya Gupta† Shyam Upadhyay†", "Georgia Institute of Technology"]


def test_a_box_of_a_character_or_two_in_full_type_is_not_a_mark() -> None:
    # Given table cells stacked in a column, one of them a short number in the same type
    cells = [box("Total", 0.1, 0.1, 0.2), box("12", 0.1, 0.11, 0.13)]
    # When ordered, they are two lines (the boxes overlap: padded OCR boxes), not one
    assert texts(order_blocks(cells)) == ["Total", "12"]


def test_columns_start_under_a_centred_line_not_beside_it() -> None:
    # Given a title and author block whose last line is centred across the gutter (an address),
    # then a heading over the left column and a figure's header row at the top of the right column,
    # then the two columns
    title = [box("A title over the two columns of the paper", 0.13, 0.08, 0.88, height=0.028)]
    authors = [box("First Author", 0.3, 0.125, 0.45), box("Second Author", 0.55, 0.125, 0.72)]
    place = [box("Some Institute of Technology", 0.37, 0.16, 0.64)]
    address = [box("someone@example.com", 0.37, 0.19, 0.64)]
    heading = [box("Abstract", 0.26, 0.25, 0.35)]
    header = [box("Title", 0.65, 0.266, 0.69), box("Length", 0.73, 0.268, 0.78)]
    cols = prose("L", 0.14, 0.46, 0.26, 16) + prose("R", 0.55, 0.88, 0.26, 16)
    # When ordered, the heading is read at the top of the left column, the header row at the top of the right
    lines = heads(order_blocks(shuffled(title + authors + place + address + heading + header + cols)))
    assert lines == ["A", "First", "Some", "someone@example.com", "Abstract", *names("L", 16), "Title", *names("R", 16)]


def test_two_columns_on_a_skewed_scan() -> None:
    # Turned by 0.7 degrees: each column's left edge drifts right going down, and the lines slope.
    slope = 0.012
    blocks = []
    for prefix, x0, x1 in (("L", 0.08, 0.485), ("R", 0.505, 0.91)):
        for i in range(1, 31):
            y = 0.05 + i * LEADING * 0.9
            dx = slope * y
            blocks.append(
                Block(text=f"{prefix}{i} words of a line", bbox=(x0 + dx, y, x1 + dx, y + LINE * 1.4), confidence=0.9)
            )
    lines = heads(order_blocks(shuffled(blocks)))
    assert lines == names("L", 30) + names("R", 30)


# --- a text layer's order -----------------------------------------------------------------


def layer(blocks: list[Block]) -> list[tuple[str, tuple[float, float, float, float], float]]:
    return [(b.text, b.bbox, b.confidence) for b in blocks]


def test_layer_read_straight_across_the_columns_is_put_in_column_order() -> None:
    left = prose("L", 0.08, 0.48, 0.05, 20)
    right = prose("R", 0.52, 0.92, 0.05, 20)
    across = [b for pair in zip(left, right, strict=True) for b in pair]
    order = layer_order(layer(across))
    assert order is not None
    assert [across[i].text.split()[0] for i in order] == names("L", 20) + names("R", 20)


def test_layer_in_reading_order_is_left_alone() -> None:
    blocks = prose("L", 0.08, 0.48, 0.05, 20) + prose("R", 0.52, 0.92, 0.05, 20)
    assert layer_order(layer(blocks)) is None
    assert layer_order(layer(prose("P", 0.1, 0.9, 0.05, 25))) is None


def test_layer_keeps_its_own_order_inside_a_column() -> None:
    # A formula's parts (a superscript after its line) are the writer's business.
    left = prose("L", 0.08, 0.48, 0.05, 20)
    left.insert(5, box("2", 0.47, 0.05 + 5 * LEADING, 0.475, height=0.01))  # by the end of line 5
    right = prose("R", 0.52, 0.92, 0.05, 20)
    across = [*right[:10], *left, *right[10:]]
    order = layer_order(layer(across))
    assert order is not None
    assert [across[i].text.split()[0] for i in order] == [*names("L", 5), "2", *names("L", 20)[5:], *names("R", 20)]


def test_layer_that_starts_with_its_footnote_reads_it_at_the_foot() -> None:
    body = prose("B", 0.1, 0.9, 0.05, 20)
    note = prose("N", 0.1, 0.9, 0.88, 2, height=0.014)
    footer = [box("Page 3", 0.45, 0.96, 0.55, height=0.015)]
    order = layer_order(layer(note + body + footer))
    assert order is not None
    got = [(note + body + footer)[i].text.split()[0] for i in order]
    assert got == [*names("B", 20), *names("N", 2), "Page"]


def _strips_by_hand(edges: list[tuple[float, float]], allowed: int) -> list[tuple[float, float, float, float]]:
    """The gutter search's candidates found the slow way: each segment between consecutive edges,
    how many boxes cover its middle; runs of segments covered at most ``allowed`` times; in each,
    the first longest stretch at the run's least cover."""
    xs = sorted({x for edge in edges for x in edge})
    starts = [x0 for x0, _ in edges]
    ends = [x1 for _, x1 in edges]
    segments = [(a, b, sum(s <= a for s in starts) - sum(e <= a for e in ends)) for a, b in pairwise(xs)]
    out: list[tuple[float, float, float, float]] = []
    k = 0
    while k < len(segments):
        if segments[k][2] > allowed:
            k += 1
            continue
        run: list[tuple[float, float, int]] = []
        while k < len(segments) and segments[k][2] <= allowed:
            run.append(segments[k])
            k += 1
        least = min(d for _, _, d in run)
        stretches: list[tuple[float, float]] = []
        for a, b, d in run:
            if d != least:
                stretches.append((b, b))  # a break: the next stretch at the least starts anew
            elif stretches and stretches[-1][1] == a and stretches[-1][0] != stretches[-1][1]:
                stretches[-1] = (stretches[-1][0], b)
            else:
                stretches.append((a, b))
        best = max(stretches, key=lambda s: s[1] - s[0])
        out.append((run[0][0], run[-1][1], *best))
    return out


def test_gutter_search_finds_what_counting_cover_by_hand_finds() -> None:
    rng = random.Random(3)
    for case in range(2000):
        grid = rng.choice([10, 40, 1000])  # coarse grids make edges meet and boxes start level
        edges: list[tuple[float, float]] = []
        for _ in range(rng.randint(0, 25)):
            a, b = sorted(rng.randint(0, grid) / grid for _ in range(2))
            if a < b:
                edges.append((a, b))
        allowed = rng.randint(0, 4)
        starts, ends = sorted(a for a, _ in edges), sorted(b for _, b in edges)
        want = _strips_by_hand(edges, allowed)
        assert list(_sparse_strips(starts, ends, allowed)) == want, (case, edges, allowed)
        # Bounded: the same intervals, those that reach into the bounds.
        reach, stop = sorted(rng.randint(0, grid) / grid for _ in range(2))
        if rng.random() < 0.3:
            reach, stop = stop, reach
        bounded = list(_sparse_strips(starts, ends, allowed, (reach, stop)))
        assert bounded == [s for s in want if s[1] >= reach and s[0] <= stop], (case, edges, allowed, reach, stop)
