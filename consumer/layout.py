"""Reading order for OCR boxes: a pure function of the boxes, no images, no engine.

OCR engines report text boxes in detection order, which on a two-column page
interleaves the columns line by line (rapidocr's character error rate on such
a page is about 0.72 in its own order against 0.003 ignoring order). This
module puts boxes in the order a person reads them:

1. Look for a column gutter: a vertical strip of whitespace with at least
   three boxes wholly on each side, each side a real column (a fifth of the
   region wide or more, its boxes filling it like lines of text do). A few
   boxes may cross the strip: a title or a caption that spans the columns.
2. Boxes that cross the gutter cut the region into bands from top to bottom;
   in each band the left side is read before the right side, recursively, so
   a three-column page or a title above two columns comes out right.
3. A region with three or more such strips is a table: its columns are not
   read one after the other but row by row, like a region without a gutter.
4. What remains is grouped into lines by vertical overlap and read top to
   bottom, each line left to right.

:func:`blocks_to_text` joins the boxes of a line with spaces and the lines
with newlines, and leaves a blank line where the gap between two lines of the
same column is large (a new paragraph).

All coordinates are page fractions (0..1, origin top-left), as in
:class:`schemas.messages.Block`.

Pages scanned sideways or upside down are recognised from what an OCR pass
found (:func:`detect_rotation`): text lines of a sideways page come out as
tall boxes, and an upside-down page reads with low confidence (rapidocr:
0.99 upright, 0.65 to 0.75 turned, on the corpus). :func:`rotate_box` maps a
box read on the turned-upright image back to the page.
"""

from __future__ import annotations

from itertools import pairwise
from statistics import median
from typing import Protocol, TypeVar

from schemas.messages import Block, page_fraction


class Boxed(Protocol):
    """What reading order needs of a box: its text and where it lies (a :class:`Block`, or a lighter stand-in)."""

    @property
    def text(self) -> str: ...

    @property
    def bbox(self) -> tuple[float, float, float, float]: ...


B = TypeVar("B", bound=Boxed)

__all__ = ["blocks_to_text", "detect_rotation", "merge_blocks", "order_blocks", "rotate_box"]

# OCR boxes are padded (rapidocr grows each by its unclip ratio) and skewed
# scans tilt them, so boxes of two columns may nearly touch or overlap a
# little. Gutters are looked for between boxes narrowed by this much on each
# side (a fraction of the page width, about 3 pt on a Letter page).
SHRINK = 0.005
# The least gutter between narrowed boxes: the two-column scans of the corpus
# leave about 0.004 between rapidocr's boxes, 0.014 once narrowed. Word spaces
# do not matter here: a gutter must also run through many lines.
MIN_GUTTER = 0.01
# Boxes on each side of a gutter before it counts: two or three lines side by
# side are not yet columns.
MIN_SIDE_BOXES = 3
# Share of the region's width each side of a gutter must have: a margin of
# line or equation numbers is not a column.
MIN_COLUMN_SHARE = 0.2
# Median box width over the column's width: lines of text fill their column,
# scattered labels do not.
MIN_COLUMN_FILL = 0.4
# Boxes that may cross a gutter (titles, captions, a centred page number),
# as a share of the region's boxes; at least one.
MAX_CROSSING_SHARE = 0.1
# This many gutters in one region make it a table, read row by row.
TABLE_GUTTERS = 3
# Two boxes are on one line when they overlap vertically by this share of the smaller height.
LINE_OVERLAP = 0.5
# Two boxes overlapping horizontally by more than this share of the narrower are on different lines.
STACKED_OVERLAP = 0.3
# A gap between two lines larger than this many median line heights starts a paragraph.
PARAGRAPH_GAP = 0.75
# A box this much taller than wide (in pixels) is a sideways text line; a share of
# such boxes at least SIDEWAYS_SHARE makes the page sideways.
TALL_RATIO = 1.5
SIDEWAYS_SHARE = 0.5
MIN_LINE_CHARS = 3
# Below this mean confidence a page of horizontal lines may be upside down: upright
# scans of the corpus read at 0.988 to 0.999, upside-down ones at 0.69 to 0.75.
UPRIGHT_CONFIDENCE = 0.85
# An OCR box that overlaps text-layer boxes by this share of its own area repeats them.
DUPLICATE_OVERLAP = 0.5


def order_blocks(blocks: list[B]) -> list[list[B]]:
    """Group blocks into lines and return the lines in reading order, each line left to right.

    Columns are read one after the other (top to bottom within each), blocks
    that span the columns are read in their place, and tables row by row.
    Blocks with no text after stripping are dropped.
    """
    kept = [b for b in blocks if b.text.strip()]
    return _order_region(kept)


def blocks_to_text(blocks: list[B]) -> str:
    """The text of the blocks in reading order: words of a line joined by spaces, lines by newlines.

    A blank line separates two lines of the same column whose vertical gap is
    larger than :data:`PARAGRAPH_GAP` times the median line height.
    """
    lines = order_blocks(blocks)
    if not lines:
        return ""
    height = median(_y1(line) - _y0(line) for line in lines)
    parts = [_line_text(lines[0])]
    for previous, line in pairwise(lines):
        gap = _y0(line) - _y1(previous)
        # A line above the previous one starts the next column: no paragraph break implied.
        parts.append("\n\n" if height > 0 and gap > PARAGRAPH_GAP * height else "\n")
        parts.append(_line_text(line))
    return "".join(parts)


def _line_text(line: list[B]) -> str:
    return " ".join(b.text.strip() for b in line)


def _y0(line: list[B]) -> float:
    return min(b.bbox[1] for b in line)


def _y1(line: list[B]) -> float:
    return max(b.bbox[3] for b in line)


def _order_region(blocks: list[B]) -> list[list[B]]:
    edges = [_narrowed(b) for b in blocks]
    gutter = _find_gutter(blocks, edges)
    if gutter is None:
        return _group_lines(blocks)
    lo, hi = gutter
    left = [b for b, (_, x1) in zip(blocks, edges, strict=True) if x1 <= lo]
    right = [b for b, (x0, _) in zip(blocks, edges, strict=True) if x0 >= hi]
    crossing = [b for b, (x0, x1) in zip(blocks, edges, strict=True) if x1 > lo and x0 < hi]
    if not crossing:
        return _order_region(left) + _order_region(right)
    # Spanning blocks cut the page into bands; each band is read on its own.
    # Boxes level with a spanning line belong to it (a title detected as two boxes).
    span_lines = _group_lines(crossing)
    rest: list[B] = []
    for block in left + right:
        home = next((line for line in span_lines if _overlaps(_y0(line), _y1(line), *_y_span(block))), None)
        if home is None:
            rest.append(block)
        else:
            home.append(block)
    rest.sort(key=_centre_y)
    lines: list[list[B]] = []
    i = 0
    for line in span_lines:
        band = []
        while i < len(rest) and _centre_y(rest[i]) < _y0(line):
            band.append(rest[i])
            i += 1
        lines += _order_region(band)
        lines.append(sorted(line, key=lambda b: b.bbox[0]))
    lines += _order_region(rest[i:])
    return lines


def _y_span(block: B) -> tuple[float, float]:
    return block.bbox[1], block.bbox[3]


# The helpers below run for every pair of boxes compared: they spell min and max out as
# conditionals that pick the same value (min(a, b) is b only where b < a): a quarter of the
# time of ordering a page's boxes.


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    overlap = (b1 if b1 < a1 else a1) - (b0 if b0 > a0 else a0)
    if not overlap > 0:
        return False
    a, b = a1 - a0, b1 - b0
    return overlap >= LINE_OVERLAP * (b if b < a else a)


def _centre_y(block: B) -> float:
    return (block.bbox[1] + block.bbox[3]) / 2


def _group_lines(blocks: list[B]) -> list[list[B]]:
    """Lines by vertical overlap, top to bottom; each line sorted left to right."""
    lines: list[list[B]] = []
    line_y0 = line_y1 = 0.0
    for block in sorted(blocks, key=_centre_y):
        y0, y1 = block.bbox[1], block.bbox[3]
        # Boxes of one line sit side by side: a box above or below one already in the line
        # starts the next line, however much the two overlap vertically (on a skewed scan the
        # box of a full-width line is taller than the line and overlaps the next one).
        if lines and _overlaps(line_y0, line_y1, y0, y1) and not any(_stacked(block, other) for other in lines[-1]):
            lines[-1].append(block)
            # Keep the line's own span (its first box) so a slanted line does not swallow the next.
            continue
        lines.append([block])
        line_y0, line_y1 = y0, y1
    return [line if len(line) == 1 else sorted(line, key=_left) for line in lines]


def _left(block: B) -> float:
    return block.bbox[0]


def _stacked(a: B, b: B) -> bool:
    """Whether two boxes overlap horizontally by more than :data:`STACKED_OVERLAP` of the narrower one."""
    a0, _, a1, _ = a.bbox
    b0, _, b1, _ = b.bbox
    overlap = (b1 if b1 < a1 else a1) - (b0 if b0 > a0 else a0)
    if not overlap > 0:
        return False
    wa, wb = a1 - a0, b1 - b0
    return overlap > STACKED_OVERLAP * (wb if wb < wa else wa)


def _narrowed(block: B) -> tuple[float, float]:
    """The block's left and right edges, each moved in by :data:`SHRINK` (a narrow box shrinks to its centre)."""
    x0, _, x1, _ = block.bbox
    centre = (x0 + x1) / 2
    left, right = x0 + SHRINK, x1 - SHRINK
    return (centre if centre < left else left), (centre if centre > right else right)


def _find_gutter(blocks: list[B], edges: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The widest column gutter of the region as (x_lo, x_hi), or None for one column or a table.

    ``edges`` are the blocks' narrowed edges (:func:`_narrowed`), in the same order.
    """
    if len(blocks) < 2 * MIN_SIDE_BOXES:
        return None
    region_x0 = min(b.bbox[0] for b in blocks)
    region_x1 = max(b.bbox[2] for b in blocks)
    region_width = region_x1 - region_x0
    if region_width <= 0:
        return None
    allowed = max(1, int(MAX_CROSSING_SHARE * len(blocks)))
    strips = [
        (lo, hi)
        for lo, hi in _sparse_strips(edges, allowed)
        if hi - lo >= MIN_GUTTER and lo > region_x0 and hi < region_x1
    ]
    splitting = []
    for lo, hi in strips:
        left = [b for b, (_, x1) in zip(blocks, edges, strict=True) if x1 <= lo]
        right = [b for b, (x0, _) in zip(blocks, edges, strict=True) if x0 >= hi]
        if len(left) >= MIN_SIDE_BOXES and len(right) >= MIN_SIDE_BOXES:
            splitting.append((lo, hi, left, right))
    if len(splitting) >= TABLE_GUTTERS:
        return None
    best: tuple[float, float] | None = None
    for lo, hi, left, right in splitting:
        if not (_is_column(left, region_width) and _is_column(right, region_width)):
            continue
        if best is None or hi - lo > best[1] - best[0]:
            best = (lo, hi)
    return best


def _is_column(side: list[B], region_width: float) -> bool:
    x0 = min(b.bbox[0] for b in side)
    x1 = max(b.bbox[2] for b in side)
    width = x1 - x0
    if width < MIN_COLUMN_SHARE * region_width:
        return False
    return median(b.bbox[2] - b.bbox[0] for b in side) >= MIN_COLUMN_FILL * width


def _sparse_strips(edges: list[tuple[float, float]], allowed: int) -> list[tuple[float, float]]:
    """Candidate gutters: inside each x-interval covered by at most ``allowed`` blocks, its least covered part.

    The least covered part, not the whole interval: around a gutter that a
    title crosses, the interval also takes in the ragged ends of the column's
    lines, and those lines must stay on their side.
    """
    events = sorted([(x0, 1) for x0, _ in edges] + [(x1, -1) for _, x1 in edges])
    # Elementary segments between consecutive box edges, with how many boxes cover each.
    segments: list[tuple[float, float, int]] = []
    depth = 0
    for (x, step), (next_x, _) in pairwise(events):
        depth += step
        if next_x > x:
            segments.append((x, next_x, depth))
    cores: list[tuple[float, float]] = []
    run: list[tuple[float, float, int]] = []
    for segment in [*segments, (1.0, 1.0, allowed + 1)]:  # a sentinel closes the last run
        if segment[2] <= allowed:
            run.append(segment)
            continue
        if run:
            least = min(d for _, _, d in run)
            best: tuple[float, float] | None = None
            lo: float | None = None
            end = run[-1][1]
            for x0, _, d in [*run, (end, end, least + 1)]:
                if d == least and lo is None:
                    lo = x0
                elif d != least and lo is not None:
                    if best is None or x0 - lo > best[1] - best[0]:
                        best = (lo, x0)
                    lo = None
            if best is not None:
                cores.append(best)
            run = []
    return cores


# --- rotation -------------------------------------------------------------------------


def detect_rotation(blocks: list[Block], width: int, height: int) -> tuple[int, ...]:
    """The rotations worth trying for a page image an OCR pass read as ``blocks``, most likely first.

    A rotation is how far the page's text is turned clockwise; reading the
    image turned back by it (:func:`rotate_box` maps the boxes) should read
    better. ``()`` means upright, or nothing to judge (no blocks):

    * most boxes taller than wide (``TALL_RATIO``, in pixels of a ``width`` x
      ``height`` image): the lines run vertically, so the page is sideways:
      ``(90, 270)`` (boxes alone cannot tell which way);
    * lines horizontal but a mean confidence (weighted by text length) below
      ``UPRIGHT_CONFIDENCE``: perhaps upside down, ``(180,)``.
    """
    boxes = [b for b in blocks if b.text.strip()]
    if not boxes or width <= 0 or height <= 0:
        return ()
    # Only boxes of a few characters or more: a single digit in a table cell is taller than wide.
    lines = [b for b in boxes if len(b.text.strip()) >= MIN_LINE_CHARS]
    tall = sum(1 for b in lines if (b.bbox[3] - b.bbox[1]) * height > TALL_RATIO * (b.bbox[2] - b.bbox[0]) * width)
    if lines and tall >= SIDEWAYS_SHARE * len(lines):
        return (90, 270)
    chars = sum(len(b.text.strip()) for b in boxes)
    confidence = sum(b.confidence * len(b.text.strip()) for b in boxes) / chars
    return (180,) if confidence < UPRIGHT_CONFIDENCE else ()


def rotate_box(box: tuple[float, float, float, float], rotation: int) -> tuple[float, float, float, float]:
    """Map a box in fractions of the image turned upright back to the page, whose text is turned ``rotation``.

    ``rotation`` is clockwise, in 0, 90, 180 or 270 (what :func:`detect_rotation` returns). The
    result is clamped to the page and rounded as every box is (:func:`~schemas.messages.page_fraction`).
    """
    u0, v0, u1, v1 = box
    if rotation == 0:  # most pages: no corners to turn
        return page_fraction(u0), page_fraction(v0), page_fraction(u1), page_fraction(v1)
    corners: list[tuple[float, float]]
    if rotation == 90:
        corners = [(1 - v0, u0), (1 - v1, u1)]
    elif rotation == 180:
        corners = [(1 - u0, 1 - v0), (1 - u1, 1 - v1)]
    elif rotation == 270:
        corners = [(v0, 1 - u0), (v1, 1 - u1)]
    else:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {rotation}")
    xs = [page_fraction(x) for x, _ in corners]
    ys = [page_fraction(y) for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


# --- a text layer and OCR on one page ----------------------------------------------------


def merge_blocks(layer: list[Block], ocr: list[Block]) -> list[Block]:
    """The text layer's blocks and the OCR blocks that say something the layer does not, in reading order.

    For a ``hybrid`` page (a text layer and a scan on it): the layer is exact
    where it has text, so an OCR box covered by layer boxes (for at least
    :data:`DUPLICATE_OVERLAP` of its area) is the same text read twice and is
    dropped; the rest (the text inside the scan) joins the layer's blocks.
    """
    kept = [b for b in ocr if _covered_share(b, layer) < DUPLICATE_OVERLAP]
    return [block for line in order_blocks([*layer, *kept]) for block in line]


def _covered_share(block: Block, others: list[Block]) -> float:
    x0, y0, x1, y1 = block.bbox
    area = (x1 - x0) * (y1 - y0)
    if area <= 0:
        return 1.0 if any(_box_contains(o.bbox, (x0 + x1) / 2, (y0 + y1) / 2) for o in others) else 0.0
    covered = 0.0
    for other in others:
        u0, v0, u1, v1 = other.bbox
        covered += max(0.0, min(x1, u1) - max(x0, u0)) * max(0.0, min(y1, v1) - max(y0, v0))
    # Layer boxes do not overlap each other much, so the sum is close to the union.
    return min(1.0, covered / area)


def _box_contains(box: tuple[float, float, float, float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]
