"""Reading order for a page's text boxes (OCR boxes or a text layer's runs): a pure function of the boxes.

OCR engines report text boxes in detection order, which on a two-column page
interleaves the columns line by line, and a PDF's text layer is in the order
its writer drew it: straight across three columns, footnotes or the footer
first. This module puts boxes in the order a person reads them, by a recursive
XY-cut over the boxes (:func:`regions`):

1. A region is cut into bands at horizontal whitespace. Consecutive bands that
   leave a common vertical gutter are one block of columns; a band across the
   gutter (a title, a full-width caption) breaks the columns: what is above is
   read before it, what is below after. A box that only straddles a gutter
   (reaches into the next column, does not span both) is read by its left
   edge. At the top and bottom of the page, short bands set off from the text
   are the running head (read first) and footers (read last).
2. A block is cut at its gutters into columns, read left to right, each cut
   again. Columns that are not text and sit level in rows are a table, read
   row by row; a narrow outer column (margin notes) is read after the body.
3. Rotated text (boxes much taller than wide: an arXiv stamp, a thumb tab) is
   kept and read last. Inside a region, boxes are grouped into lines by
   vertical overlap, top to bottom, each left to right.

A scan's boxes are first turned back by its skew, measured on the left edges
of its lines. Gaps are measured on boxes narrowed a little (OCR pads them).

A text layer keeps its own order except where the layout shows it wrong
(:func:`layer_order`): columns of text read out of order, a foot given first.

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

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, islice, pairwise
from math import inf
from operator import add, lt, sub
from statistics import median
from typing import NamedTuple, Protocol, TypeVar

from schemas.messages import Block, page_fraction


class Boxed(Protocol):
    """What reading order needs of a box: its text and where it lies (a :class:`Block`, or a lighter stand-in)."""

    @property
    def text(self) -> str: ...

    @property
    def bbox(self) -> tuple[float, float, float, float]: ...


B = TypeVar("B", bound=Boxed)

__all__ = [
    "blocks_to_text",
    "detect_rotation",
    "layer_order",
    "merge_blocks",
    "order_blocks",
    "regions",
    "rotate_box",
]

# Geometry is in page fractions; these are tuned for text of 7 to 12 pt on a Letter or A4 page at
# 150 to 300 dpi, where rapidocr pads its boxes by about a third of a line and skew tilts them.

# OCR boxes are padded and skewed scans tilt them, so boxes of two columns may nearly touch. Gutters
# are looked for between boxes narrowed by this much on each side (about 3 pt on a Letter page).
SHRINK = 0.005
# The least gutter between narrowed boxes: a word space is less, a column gutter more.
MIN_GUTTER = 0.01
# Horizontal whitespace is looked for between boxes whose top and bottom are moved in by this share
# of the median line height: padded boxes of consecutive lines overlap a little.
VERTICAL_SHRINK = 0.2
# A band of at most this many median line heights at the top (bottom) of the page, set off by a gap
# of at least HEAD_GAP of them, is a running head (a footer): read first (last), not inside a column.
HEAD_LINES = 2.5
HEAD_GAP = 0.8
# The band at the very top or bottom needs less: nothing but a head or a footer is set off there.
EDGE_GAP = 0.6
# and by more than this many times the usual gap between lines.
SET_OFF = 1.5
HEAD_BOXES = 4
# A box across a gutter spans it (and breaks the columns) when it is this share of the block's
# width, or reaches this share into the columns on both sides; otherwise it straddles the gutter
# and is read in the column of its left edge.
SPAN_SHARE = 0.6
# A strip crossed by at most this share of a region's boxes may be a gutter they straddle.
# The gutter search jumps ahead where more than this many boxes above that share cover the sweep.
SWEEP_SKIP = 8
STRADDLING_SHARE = 0.1
# A box across a gutter starting this close to a column's left edge is read in that column.
STRADDLE_ALIGN = 0.02
# More boxes than this across a gutter in one band are not a straddling block: the band breaks.
MAX_STRADDLERS = 2
# A text layer whose columns of text the layout would reorder is reordered only when this share
# of its text is out of place: less is a side note or a caption the writer put elsewhere.
MIN_DISPLACED = 0.025
# A page's foot (footnotes, footers) starts this far down: above it, small bands set apart are a
# figure's labels.
FOOT_ZONE = 0.85
# A column of text, for a text layer to be put in order by columns, has this many lines at least.
PROSE_LINES = 8
# Lines this much larger than the text below them, set off from it, head their region.
HEADING_SIZE = 1.2
# A text layer's boxes shorter than this are labels (of a figure): read where they stand.
LABEL_LENGTH = 24
# Lines this much smaller than the page's are footnotes, where they end a column.
FOOTNOTE_SIZE = 0.9
# A column of text: at least this many boxes, their median width this share of the column's, or
# their median length this many characters (lines of a column not yet cut into its own columns).
MIN_COLUMN_BOXES = 3
MIN_COLUMN_FILL = 0.4
MIN_LINE_LENGTH = 16
# and at least this share of its region's width: a margin of labels or numbers is not a column.
MIN_COLUMN_SHARE = 0.2
# This many columns side by side are a table wherever their boxes sit level in rows.
TABLE_COLUMNS = 4
# Side by side, columns that are not all text are a table when this share of their boxes sits
# level with a box in another column: read row by row.
ROW_ALIGNED = 0.6
# An outer column narrower than this share of its region, beside one at least twice as wide, holds
# margin notes (or a thumb tab, line numbers far out): read after the body.
MARGIN_SHARE = 0.2
# A column of glyphs (bullets, footnote marks: every box at most this many characters) within
# GLYPH_GAP of the column to its right belongs to that column.
GLYPH_CHARS = 2
GLYPH_GAP = 0.03
# A column of fewer than MIN_COLUMN_BOXES boxes stands alone only at the edge of its region, this far out.
MARGIN_GAP = 0.025
# or, beside a body of at least NOTE_BODY boxes, this far (a margin note by a paragraph).
NOTE_GAP = 0.015
NOTE_BODY = 8
# A box of at least MIN_LINE_CHARS characters this much taller than wide (in page fractions) holds
# rotated text (an arXiv stamp, a thumb tab): kept, read last.
ROTATED_RATIO = 1.2
# Skew is measured on the left edges of lines at least SKEW_MIN_WIDTH wide, in runs of at least
# SKEW_MIN_LINES edges that step by less than SKEW_EDGE and span SKEW_SPAN line heights; a slope
# under SKEW_IGNORED is taken as straight.
SKEW_MIN_WIDTH = 0.1
SKEW_EDGE = 0.004
SKEW_MIN_LINES = 8
SKEW_SPAN = 10
SKEW_IGNORED = 0.001
# Width over height of the page, to turn a slope in page fractions across: about A4's and Letter's.
PAGE_ASPECT = 0.75
# Two boxes are on one line when they overlap vertically by this share of the smaller height.
LINE_OVERLAP = 0.5
# Two boxes overlapping horizontally by more than this share of the narrower are on different lines.
STACKED_OVERLAP = 0.3
# A mark (a box of at most GLYPH_CHARS characters) in type this much smaller than a box it overlaps
# is a superscript or footnote mark on that box's line, even inside the box (OCR boxes a line with
# room around it, and may box its mark apart).
MARK_SIZE = 0.75
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

Rect = tuple[float, float, float, float]
# A gutter: the x-interval of a strip between columns.
Gutter = tuple[float, float]
# Bands joined into one block: its boxes, whether it is one band of one piece, whether it is a
# running head or footer, and its bands.
Group = tuple[list[int], bool, bool, list[list[int]]]


def order_blocks(blocks: list[B]) -> list[list[B]]:
    """Group blocks into lines and return the lines in reading order, each line left to right.

    The page is cut into regions (:func:`regions`); inside each region the
    blocks are grouped into lines by vertical overlap, top to bottom (a table's
    region is one region, so it reads row by row). Blocks with no text after
    stripping are dropped.
    """
    kept = [b for b in blocks if b.text.strip()]
    if not kept:
        return []
    found, rects = _layout([b.bbox for b in kept], [b.text for b in kept], straight=False)
    lines: list[list[B]] = []
    for region in found:
        # Lines are found on the boxes turned back by the scan's skew: a table's row on a
        # tilted page is level again.
        for line in _group_lines([_At(kept[i].text, rects[i], i) for i in region]):
            lines.append([kept[at.block] for at in line])
    return lines


class _At(NamedTuple):
    """A box where reading order sees it (turned back by the skew), and which block it is."""

    text: str
    bbox: Rect
    block: int


def layer_order(boxes: Sequence[tuple[str, Rect, float]]) -> list[int] | None:
    """The order to read a text layer's runs in, or None where the layer's own order already reads right.

    ``boxes`` are the runs in the layer's order (:attr:`consumer.pdf.TextLayer.boxes`). The writer's
    order is trusted but where the layout shows it wrong:

    * on a page with columns of text (:func:`regions`, cut coarsely: a column, or the lines between
      two column blocks, is one region), the regions are put in reading order, each keeping the
      layer's order inside; only where that moves MIN_DISPLACED of the text or more (less is a side
      note or a caption the writer placed on purpose);
    * on any page, a foot (footnotes, footers: the bands below FOOT_ZONE set off from the text) that
      the layer gives first goes after the text, in lines top to bottom.

    Boxes of no area or off the page (clipped text) stay after the run the layer has them after.
    """
    placed = [i for i, (_, (x0, y0, x1, y1), _) in enumerate(boxes) if 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1]
    if len(placed) < 2:
        return None
    rects = [boxes[i][1] for i in placed]
    texts = [boxes[i][0] for i in placed]
    edges = _page_edges(rects)
    if rects[0][1] < FOOT_ZONE and not _may_have_columns(*edges):
        return None  # most pages: one column, read from its top; nothing to find
    cut = _Cutter(texts, coarse=True)
    cut.page_edges = edges
    found = _layout_with(cut, rects, straight=True)
    order: list[int] | None = None
    if cut.columns_of_text:
        order = [i for region in found for i in sorted(region)]
        # Nothing displaced where the layer is in that order already (most papers' layers).
        if _increasing(order) or _displaced(order, cut.lengths) < MIN_DISPLACED:
            order = None
    if order is None:
        order = _foot_last(rects, cut.footnotes | cut.feet)
    if order is None:
        return None
    # Back to the indices of all boxes, the unplaced ones after their predecessor in the layer.
    full = order
    if len(placed) < len(boxes):
        full = [placed[k] for k in order]
        after: dict[int, list[int]] = {}
        last = -1
        kept = set(placed)
        for i in range(len(boxes)):
            if i in kept:
                last = i
            else:
                after.setdefault(last, []).append(i)
        full = after.get(-1, []) + [j for i in full for j in (i, *after.get(i, []))]
    return None if _increasing(full) else full


def _increasing(order: list[int]) -> bool:
    """Whether ``order`` is strictly increasing (compared pairwise in C: a dense page's order is long)."""
    return all(map(lt, order, islice(order, 1, None)))


def _page_edges(rects: list[Rect]) -> tuple[list[float], list[float], list[float], list[float]]:
    """The boxes' left and right edges moved in by SHRINK, as they are and sorted."""
    lefts = [x0 + SHRINK for x0, _, _, _ in rects]
    rights = [x1 - SHRINK for _, _, x1, _ in rects]
    return lefts, rights, sorted(lefts), sorted(rights)


def _may_have_columns(lefts: list[float], rights: list[float], starts: list[float], ends: list[float]) -> bool:
    """Whether a strip of the page that few boxes cross has PROSE_LINES boxes wholly on each side.

    The boxes' edges are as :func:`_page_edges` gives them.
    """
    if len(lefts) < 2 * PROSE_LINES:
        return False
    allowed = max(1, int(STRADDLING_SHARE * len(lefts)))
    # A strip with PROSE_LINES boxes wholly on each side reaches the PROSE_LINES-th right edge
    # from the left and the PROSE_LINES-th left edge from the right.
    within = (ends[PROSE_LINES - 1], starts[-PROSE_LINES])
    for run_lo, run_hi, core_lo, core_hi in _sparse_strips(starts, ends, allowed, within):
        if run_hi - run_lo < MIN_GUTTER:
            continue
        if bisect_right(ends, core_hi) >= PROSE_LINES and len(starts) - bisect_left(starts, core_lo) >= PROSE_LINES:
            return True
    return False


def _foot_last(rects: list[Rect], foot: set[int]) -> list[int] | None:
    """The layer's order, but for a foot the layer starts with: after the rest, in lines top to bottom."""
    feet = {i for i in foot if rects[i][1] >= FOOT_ZONE}
    if 0 not in feet or len(feet) == len(rects):
        return None
    lines = _group_lines([_At("", rects[i], i) for i in feet])
    return [i for i in range(len(rects)) if i not in feet] + [at.block for line in lines for at in line]


def regions(rects: Sequence[Rect], texts: Sequence[str], *, straight: bool = False) -> list[list[int]]:
    """The page's regions in reading order, each a list of indices into ``rects`` (boxes with ``texts``).

    A recursive XY-cut over the boxes:

    1. The region is cut into bands at horizontal whitespace. Consecutive bands
       that leave a common vertical gutter (no box crossing it) are one block
       of columns; a band that crosses the gutter (a title, a full-width figure
       caption) breaks the columns: what is above is read before it, what is
       below after. On the page itself, a short band set off at the top (bottom)
       is the running head (footer) and is read first (last).
    2. A block of one band or of columns is cut at its gutters; the columns
       are read left to right, each cut again. Columns that are not all text
       and whose boxes sit level in rows are a table: one region, read row by
       row. A narrow outer column (margin notes) is read after the body.
    3. Rotated text (tall boxes) is kept, last.

    The boxes of a scan are first turned back by its skew (:func:`_deskewed`); ``straight`` says
    they need not be (a text layer's boxes).
    """
    return _layout(rects, texts, straight=straight)[0]


def _layout(rects: Sequence[Rect], texts: Sequence[str], *, straight: bool) -> tuple[list[list[int]], Sequence[Rect]]:
    """:func:`regions`, and the boxes as they were cut (turned back by the skew unless ``straight``)."""
    cut = _Cutter(texts)
    return _layout_with(cut, rects, straight=straight), cut.rects


def _layout_with(cut: _Cutter, rects: Sequence[Rect], *, straight: bool) -> list[list[int]]:
    """The regions :func:`regions` finds in ``rects``, cut by ``cut``."""
    if not rects:
        return []
    texts = cut.texts
    rotated = [
        i
        for i, (x0, y0, x1, y1) in enumerate(rects)
        if y1 - y0 > ROTATED_RATIO * (x1 - x0) and len(texts[i].strip()) >= MIN_LINE_CHARS
    ]
    if rotated:
        turned = set(rotated)
        upright = [i for i in range(len(rects)) if i not in turned]
        heights = sorted([rects[i][3] - rects[i][1] for i in upright]) or [0.0]
    else:  # most pages
        upright = list(range(len(rects)))
        heights = sorted([y1 - y0 for _, y0, _, y1 in rects])
    line = heights[len(heights) // 2]
    cut.reset(rects if straight else _deskewed(rects, upright, line), line)
    out = cut.region(upright, page=True) if upright else []
    if rotated:
        out.append(sorted(rotated, key=lambda i: (rects[i][0], rects[i][1])))
    return out


def _skew(rects: Sequence[Rect], items: list[int], line: float) -> float:
    """How far left edges move right per unit down the page (page fractions): the scan's skew.

    Lines of a column start level with each other, so their left edges (sorted, cut where they
    jump by SKEW_EDGE or more) fall into runs, one a column or indent; the slope of left edge
    against height, fitted in each run that spans SKEW_SPAN line heights or more, is the skew.
    The skew is the runs' median slope, weighted by their boxes; 0 where no run qualifies.
    """
    edges = sorted(
        (rects[i][0], (rects[i][1] + rects[i][3]) / 2) for i in items if rects[i][2] - rects[i][0] >= SKEW_MIN_WIDTH
    )
    fits: list[tuple[float, int]] = []
    start = 0
    for end in range(1, len(edges) + 1):
        if end < len(edges) and edges[end][0] - edges[end - 1][0] < SKEW_EDGE:
            continue
        run = edges[start:end]
        start = end
        if len(run) < SKEW_MIN_LINES:
            continue
        ys = [y for _, y in run]
        if max(ys) - min(ys) < SKEW_SPAN * line:
            continue
        mx = sum(x for x, _ in run) / len(run)
        my = sum(ys) / len(ys)
        var = sum((y - my) ** 2 for y in ys)
        if var > 0:
            fits.append((sum((x - mx) * (y - my) for x, y in run) / var, len(run)))
    if not fits:
        return 0.0
    # The median weighted by lines: a run of lines stepping round a figure is not the page's skew.
    fits.sort()
    half = sum(n for _, n in fits) / 2
    for slope, n in fits:
        half -= n
        if half <= 0:
            return slope
    return fits[-1][0]


def _deskewed(rects: Sequence[Rect], items: list[int], line: float) -> Sequence[Rect]:
    """The boxes turned back by the scan's skew (:func:`_skew`), each around its centre.

    A tilted line's box is taller than the line by its width times the slope; that much is taken
    off, so lines and gutters stand apart as they do on the page. Pages are taken to be about as
    wide as A4 or Letter (PAGE_ASPECT) to turn the slope across into one down.
    """
    slope = _skew(rects, items, line)
    if abs(slope) < SKEW_IGNORED:
        return rects
    across = slope * PAGE_ASPECT * PAGE_ASPECT
    out: list[Rect] = []
    for x0, y0, x1, y1 in rects:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        dx = -slope * cy
        dy = across * cx
        half = (y1 - y0 - abs(across) * (x1 - x0)) / 2
        if half < 0.25 * (y1 - y0):
            half = 0.25 * (y1 - y0)
        out.append((x0 + dx, cy + dy - half, x1 + dx, cy + dy + half))
    return out


class _Cutter:
    """The recursive cut over one page's boxes."""

    def __init__(self, texts: Sequence[str], *, coarse: bool = False) -> None:
        self.coarse = coarse
        self.texts = texts
        self.lengths = list(map(len, texts))
        self.is_label = [n < LABEL_LENGTH for n in self.lengths]
        self.footnotes: set[int] = set()
        self.heads: set[int] = set()
        self.feet: set[int] = set()
        self.columns_of_text = False
        # The page's edges as :func:`_page_edges` gives them, where they were taken for a first look.
        self.page_edges: tuple[list[float], list[float], list[float], list[float]] | None = None
        self.reset([], 0.0)

    def reset(self, rects: Sequence[Rect], line_height: float) -> None:
        """Cut these boxes (the page's, perhaps turned back by its skew), of this median line height."""
        self.rects = rects
        self.line = line_height
        self.straddlers: set[int] = set()
        self.gutters: list[tuple[float, float]] = []
        shrink = VERTICAL_SHRINK * line_height
        # The boxes' sides and heights as lists, read by index over a region's boxes (map over
        # a list's __getitem__ is quicker than a generator over the boxes), built a list at a time.
        sides: list[list[float]] = [list(side) for side in zip(*rects, strict=True)] if rects else [[], [], [], []]
        self.x0s, self.y0s, self.x1s, self.y1s = x0s, y0s, x1s, y1s = sides
        self.heights: list[float] = list(map(sub, y1s, y0s))
        self.widths: list[float] = list(map(sub, x1s, x0s))
        dys = [shrink if shrink < 0.4 * h else 0.4 * h for h in self.heights]
        self.tops: list[float] = list(map(add, y0s, dys))
        self.bottoms: list[float] = list(map(sub, y1s, dys))
        # Each box's narrowed sides, stopped at its centre (a box narrower than twice SHRINK).
        self.lefts: list[float] = [
            c if (c := (x0 + x1) / 2) < (a := x0 + SHRINK) else a for x0, x1 in zip(x0s, x1s, strict=True)
        ]
        self.rights: list[float] = [
            c if (c := (x0 + x1) / 2) > (b := x1 - SHRINK) else b for x0, x1 in zip(x0s, x1s, strict=True)
        ]
        # Each box's narrowed span, as a band's coverage takes it; bands' coverages met so far.
        self.spans: list[tuple[float, float]] = list(zip(self.lefts, self.rights, strict=True))
        self.band_covers: dict[tuple[int, ...], list[tuple[float, float]]] = {}

    def region(
        self,
        items: list[int],
        *,
        page: bool = False,
        joined_by: tuple[set[int], list[Gutter]] | None = None,
        bands: list[list[int]] | None = None,
    ) -> list[list[int]]:
        """The regions of ``items`` in reading order (:func:`regions`), ``page`` if they are the whole page.

        ``joined_by`` are the straddlers and gutters that joined ``items`` into one block of the
        region around them: where these boxes have the same, their bands join into one block again.
        ``bands`` are the bands that block was joined from: the bands :meth:`_bands` cuts it into
        (whole bands, consecutive and in the order of their tops, cut again make the same bands).
        """
        if len(items) < 2:
            return [items]
        self.straddlers, self.gutters = self._find_straddlers(items)
        if self.coarse and not page and not self.gutters:
            # No gutter for columns of text to stand by: a text layer reads the region in one
            # piece, but for its heading, its footnotes and a figure's labels (band by band).
            if bands is None:
                bands = self._bands(items)
            return self._with_footnotes(bands) if len(bands) > 1 else self._labels(items, bands)
        if (
            joined_by is not None
            and self.gutters == joined_by[1]
            and self.straddlers == joined_by[0].intersection(items)
        ):
            # The same bands, joined by the same test: one block (cutting into bands and joining
            # them again is most of the cost of a dense page's block of columns).
            groups: list[Group] = [(items, False, False, [])]  # one group: cut into columns below
        else:
            groups = self._blocks(self._bands(items) if bands is None else bands, page)
        if len(groups) > 1:
            out: list[list[int]] = []
            flat: list[list[int]] = []
            joined = (self.straddlers, self.gutters)  # the recursion below resets both
            for group, simple, alone, joined_from in groups:
                # A band of one piece (a line, or lines without a gutter) needs no more cutting.
                parts = [group] if simple else self.region(group, joined_by=joined, bands=joined_from)
                if self.coarse and len(parts) == 1 and not alone:
                    # Read in one piece with its neighbours: one column's lines, a formula's parts.
                    flat.append(parts[0])
                    continue
                out += self._with_footnotes(flat)
                flat = []
                out += parts
            return out + self._with_footnotes(flat)
        columns = self._columns(items)
        if len(columns) < 2:
            return self._labels(items, bands)
        # Which columns are text, and which of those prose (mostly long lines): asked by the table
        # test and, on a text layer, by the test for columns of text.
        x0, x1 = self._extent(items)
        text = [self._is_text(c, x1 - x0) for c in columns]
        prose = [t and not self._short(c) for c, t in zip(columns, text, strict=True)]
        if self._is_table(columns, text, prose):
            # Row by row: for a text layer, each band (a row) in the layer's order.
            return (self._bands(items) if bands is None else bands) if self.coarse else [items]
        if self.coarse:
            if sum(1 for c, p in zip(columns, prose, strict=True) if p and len(c) >= PROSE_LINES) < 2:
                # Side by side but not columns of text (a form, subfigures with captions): the
                # layer's own order is as good as any, but for a figure's labels.
                return self._labels(items, bands)
            self.columns_of_text = True
        columns = self._margins_last(columns)
        out = []
        for column in columns:
            out += self.region(column)
        return out

    def _bands(self, items: list[int]) -> list[list[int]]:
        """The region cut at horizontal whitespace, top to bottom."""
        tops, bottoms = self.tops, self.bottoms
        bands: list[list[int]] = []
        bottom = -1.0
        for i in sorted(items, key=tops.__getitem__):
            if bands and tops[i] <= bottom:
                bands[-1].append(i)
                if bottoms[i] > bottom:
                    bottom = bottoms[i]
                continue
            bands.append([i])
            bottom = bottoms[i]
        return bands

    def _coverage(self, items: list[int]) -> list[tuple[float, float]]:
        """The x-intervals the narrowed boxes cover, gaps under MIN_GUTTER closed, left to right.

        As :func:`_close` over the boxes' spans, sorted by their left edges alone (floats sort
        quicker than pairs): spans that start level all join the interval the first of them
        joins or starts, whatever their order, so the intervals are the same.
        """
        lefts, rights = self.lefts, self.rights
        order = sorted(items, key=lefts.__getitem__)
        out: list[tuple[float, float]] = []
        if not order:
            return out
        lo, hi = lefts[order[0]], rights[order[0]]
        for i in islice(order, 1, None):
            a = lefts[i]
            if a - hi < MIN_GUTTER:
                b = rights[i]
                if b > hi:
                    hi = b
                continue
            out.append((lo, hi))
            lo, hi = a, rights[i]
        out.append((lo, hi))
        return out

    def _column_coverage(self, items: list[int]) -> list[tuple[float, float]]:
        """The coverage of the boxes that make the columns: all but those that straddle a gutter."""
        if self.straddlers:
            kept = [i for i in items if i not in self.straddlers]
            if kept:
                return self._coverage(kept)
        return self._coverage(items)

    def _blocks(self, bands: list[list[int]], page: bool) -> list[Group]:
        """Consecutive bands joined where they leave a common gutter: each group is cut on its own.

        A band whose only boxes across the group's gutters straddle them (reach a little into the
        next column, not across both) joins too: those boxes are read in the column of their
        left edge. A band that spans the gutter breaks the columns. Each group comes with whether
        it is simple (one band of one piece), whether it is a running head or footer, and its bands.
        """
        if len(bands) == 1:
            return [(bands[0], False, False, bands)]
        alone = self._margin_bands(bands) if page else set()
        groups: list[list[int]] = []
        firsts: list[int] = []  # each group's first band
        members: list[list[list[int]]] = []  # each group's bands
        simple: list[bool] = []
        cover: list[tuple[float, float]] = []
        gutters = self.gutters
        all_open: bool | None = None  # whether every gutter is open in ``cover``; None: not yet known
        # Whether ``cover``, which leaves every gutter open, has MIN_GUTTER at least between its
        # intervals: then a band joins where each of its boxes lies inside one interval, as its
        # coverage would (boxes closed together across such a gap would be MIN_GUTTER apart).
        spread: bool | None = None
        for k, band in enumerate(bands):
            # Tried once a band has joined the cover as it is (below): where bands change the
            # cover one after another (a form's nested blocks), the look would be wasted.
            # A box of the band outside ``cover``: then its coverage is not within ``cover`` either.
            outside = False
            if all_open and spread is not False and len(cover) > 1 and groups and k not in alone and k - 1 not in alone:
                if self._inside(band, cover):
                    if spread is None:
                        spread = _spread(cover)
                    if spread:
                        # Most bands of a block of columns, without their coverage.
                        groups[-1] += band
                        members[-1].append(band)
                        simple[-1] = False
                        continue
                else:
                    outside = True
            band_cover = self._band_coverage(band)
            if (
                len(cover) == 1
                and len(band_cover) == 1
                and cover[0][0] - MIN_GUTTER < band_cover[0][1]
                and band_cover[0][0] < cover[0][1] + MIN_GUTTER
            ):
                # Most bands of one column: one piece over one piece, nothing to join.
                groups.append(list(band))
                members.append([band])
                firsts.append(k)
                simple.append(True)
                cover, all_open, spread = band_cover, None, None
                continue
            if groups and k not in alone and k - 1 not in alone:
                if len(cover) > 1 and not outside and _within(band_cover, cover):
                    # Most bands of a block of columns: inside the block's cover, which they leave
                    # as it is; they join where it leaves every gutter open (nothing to close).
                    if all_open is None:
                        all_open = all(_open(cover, lo, hi) for lo, hi in gutters)
                    if all_open:
                        groups[-1] += band
                        members[-1].append(band)
                        simple[-1] = False
                        continue
                joined = _close(cover + band_cover) if len(band_cover) > 1 else _insert(cover, band_cover[0])
                # A band may close gutters the one or the other has only by chance (a line of
                # one column reaching a little further, a gap in one line), not all of them.
                if (
                    len(joined) > 1
                    and len(joined) >= min(len(cover), len(band_cover))
                    and _keeps_gutters(joined, gutters, cover, band_cover)
                ):
                    groups[-1] += band
                    members[-1].append(band)
                    if joined != cover:
                        cover, all_open, spread = joined, None, None
                    simple[-1] = False
                    continue
            groups.append(list(band))
            members.append([band])
            firsts.append(k)
            simple.append(len(band_cover) == 1)
            cover, all_open, spread = band_cover, None, None
        heads = [k in alone for k in firsts]
        return list(zip(groups, simple, heads, members, strict=True))

    def _inside(self, band: list[int], cover: list[tuple[float, float]]) -> bool:
        """Whether each box of the band that its coverage takes (:meth:`_band_coverage`) lies inside ``cover``."""
        if len(band) > 1 and self.straddlers and not self.straddlers.isdisjoint(band):
            crossing = len(self.straddlers.intersection(band))
            if 0 < crossing <= MAX_STRADDLERS and crossing < len(band):
                band = [i for i in band if i not in self.straddlers]
        spans = self.spans
        for i in band:
            lo, hi = spans[i]
            for a, b in cover:
                if a <= lo and hi <= b:
                    break
            else:
                return False
        return True

    def _band_coverage(self, band: list[int]) -> list[tuple[float, float]]:
        """A band's coverage without the boxes that straddle a gutter, where it has only a few."""
        if len(band) == 1:  # most bands of a text layer: one line
            (i,) = band
            return [self.spans[i]]
        straddlers = self.straddlers
        crossing = len(straddlers.intersection(band)) if straddlers and not straddlers.isdisjoint(band) else 0
        if 0 < crossing <= MAX_STRADDLERS and crossing < len(band):
            return self._coverage([i for i in band if i not in self.straddlers])
        # A block is cut again inside the block around it, mostly into the same bands.
        key = tuple(band)
        cover = self.band_covers.get(key)
        if cover is None:
            cover = self.band_covers[key] = self._coverage(band)
        return cover

    def _find_straddlers(self, items: list[int]) -> tuple[set[int], list[tuple[float, float]]]:
        """The region's gutters, and the boxes that straddle one: few cross it, and they do not span the region.

        A gutter here is a strip crossed by at most a few boxes with several boxes wholly on each
        side; a box across it narrower than SPAN_SHARE of the region is read in the column of its
        left edge (a title over two of three columns, a figure caption reaching into the next).
        """
        # A text layer's columns of text have PROSE_LINES lines each: a smaller region has none.
        if len(items) < 2 * (PROSE_LINES if self.coarse else MIN_COLUMN_BOXES):
            return set(), []
        lefts, rights = self.lefts, self.rights
        allowed = max(1, int(STRADDLING_SHARE * len(items)))
        found: set[int] = set()
        gutters: list[tuple[float, float]] = []
        side = PROSE_LINES if self.coarse else MIN_COLUMN_BOXES
        edges = self.page_edges
        if edges is not None and len(items) == len(lefts) and edges[0] == lefts and edges[1] == rights:
            # All the page's boxes, none narrower than twice SHRINK: the edges of the first look.
            starts, ends = edges[2], edges[3]
        else:
            ends = sorted(map(rights.__getitem__, items))
            starts = sorted(map(lefts.__getitem__, items))
        # A gutter lies right of `side` boxes' right edges and left of `side` boxes' left edges:
        # none where those edges cross (a column of text: its short last lines end right of its
        # indents), or where more than `allowed` boxes cover all between them (the search costs
        # more than this look on most regions of a text layer, which have none).
        first, last = ends[side - 1], starts[-side]
        if first >= last:
            return found, gutters
        # The boxes across all between them are at least those starting left of it and ending
        # right of it less all the others (a column: most of its lines), and at most the fewer of
        # the two: counted one by one only where those bounds leave it open.
        n = len(items)
        left_of, right_of = bisect_right(starts, first), n - bisect_left(ends, last)
        if left_of + right_of - n > allowed or (
            min(left_of, right_of) > allowed
            and len([i for i in items if lefts[i] <= first and rights[i] >= last]) > allowed
        ):
            return found, gutters
        x0, x1 = self._extent(items)
        widths, span = self.widths, SPAN_SHARE * (x1 - x0)
        for run_lo, run_hi, core_lo, core_hi in _sparse_strips(starts, ends, allowed, (first, last)):
            if run_hi - run_lo < MIN_GUTTER or run_lo <= x0 or run_hi >= x1:
                continue
            # The gutter: MIN_GUTTER wide at least, inside the sparse strip and over its least
            # covered part, placed where the fewest boxes cross it: a line reaching into the strip
            # from one side crosses it, the other column's edge does not.
            lo, hi = core_lo, core_hi
            if hi - lo < MIN_GUTTER:
                middle = (core_lo + core_hi) / 2
                windows = [
                    (max(run_lo, core_hi - MIN_GUTTER), core_hi),
                    (core_lo, min(run_hi, core_lo + MIN_GUTTER)),
                    (max(run_lo, middle - MIN_GUTTER / 2), min(run_hi, middle + MIN_GUTTER / 2)),
                ]
                # The boxes across a window: all but those wholly right of it and wholly left of it
                # (no box is both: a box's narrowed left edge is never right of its right edge).
                lo, hi = min(windows, key=lambda w: bisect_left(starts, w[1]) - bisect_right(ends, w[0]))
            # Boxes wholly left of the gutter, and wholly right of it.
            if bisect_right(ends, lo) < side or len(starts) - bisect_left(starts, hi) < side:
                continue
            # The boxes across it are those not wholly left of it, less those wholly right of it:
            # where none cross (most gutters of a form), no box needs looking at.
            if lo >= hi or bisect_left(starts, hi) > bisect_right(ends, lo):
                found.update([i for i in items if lefts[i] < hi and rights[i] > lo and widths[i] < span])
            gutters.append((lo, hi))
        return found, gutters

    def _with_footnotes(self, groups: list[list[int]]) -> list[list[int]]:
        """Groups read in one piece, as one region, but for footnotes at their foot: a region after.

        Footnotes: the last groups, in smaller type (FOOTNOTE_SIZE of the text's above) and set off
        from the text above by HEAD_GAP line heights; a text layer may give them first.
        """
        if not groups:
            return []
        # Against the type of the text above (the upper half of the groups): a page of long
        # footnotes has more lines of them than of text.
        text = self._height([i for g in groups[: len(groups) // 2 + 1] for i in g])
        k = len(groups)
        # Most groups of a text layer are a line: its box's height, without a call.
        heights, smaller = self.heights, FOOTNOTE_SIZE * text
        while k > 1:
            group = groups[k - 1]
            if not (heights[group[0]] if len(group) == 1 else self._height(group)) < smaller:
                break
            k -= 1
        out: list[list[int]] = []
        foot = [i for g in groups[k:] for i in g]
        # Lines of text, not a figure's labels in small type.
        if foot and not self._labelled(foot) and self._gap(groups[k - 1], groups[k]) >= HEAD_GAP * self.line:
            self.footnotes.update(foot)
            out.append(foot)
            groups = groups[:k]
        # A heading over the region in larger type, set off from it, is read first.
        h = 0
        while h < len(groups) - 1 and self._height(groups[h]) > HEADING_SIZE * text:
            h += 1
        if 0 < h < len(groups) and self._gap(groups[h - 1], groups[h]) >= HEAD_GAP * self.line:
            out[:0] = [[i for g in groups[:h] for i in g], *self._labels_apart(groups[h:])]
        else:
            out[:0] = self._labels_apart(groups)
        return out

    def _labelled(self, items: list[int]) -> bool:
        """Whether the boxes are mostly labels (shorter than LABEL_LENGTH), not lines of text."""
        lengths = sorted(map(self.lengths.__getitem__, items))
        return lengths[len(lengths) // 2] < LABEL_LENGTH

    def _labels(self, items: list[int], bands: list[list[int]] | None = None) -> list[list[int]]:
        """A region as read from a text layer: in one piece, or band by band where it is mostly short
        boxes (a figure's labels and its caption); ``bands``: its bands where they are known."""
        if self.coarse and self._labelled(items):
            return self._bands(items) if bands is None else bands
        return [items]

    def _labels_apart(self, groups: list[list[int]]) -> list[list[int]]:
        """Runs of groups of text as one region each, and each group of labels (short boxes: a
        figure's) a region of its own, so labels are read where they stand, not where a layer
        happens to give them."""
        out: list[list[int]] = []
        run: list[int] = []
        for group in groups:
            if all(map(self.is_label.__getitem__, group)):
                if run:
                    out.append(run)
                    run = []
                out.append(group)
            else:
                run += group
        if run:
            out.append(run)
        return out

    def _gap(self, upper: list[int], lower: list[int]) -> float:
        return min(map(self.y0s.__getitem__, lower)) - max(map(self.y1s.__getitem__, upper))

    def _height(self, items: list[int]) -> float:
        """The median height of the boxes: their type size."""
        if len(items) == 1:  # most groups of a text layer: a line
            return self.heights[items[0]]
        heights = sorted(map(self.heights.__getitem__, items))
        return heights[len(heights) // 2]

    def _short(self, items: list[int]) -> bool:
        """Whether the boxes are mostly short (cells of a table, labels), not lines of text."""
        lengths = sorted(map(self.lengths.__getitem__, items))
        return lengths[len(lengths) // 2] < MIN_LINE_LENGTH

    def _margin_bands(self, bands: list[list[int]]) -> set[int]:
        """The bands of running heads at the top of the page and of footers at its bottom.

        From each end inwards, a band of at most HEAD_BOXES boxes and HEAD_LINES line heights, set
        off from the next band inwards by HEAD_GAP line heights or more, and of one piece unless it
        is the outermost. They are read alone, so a
        page number under the left column is not read with that column.
        """
        found: set[int] = set()
        # Most bands of a text layer are a line: its box's top and bottom, without a call.
        y0s, y1s = self.y0s, self.y1s
        top, bottom = y0s.__getitem__, y1s.__getitem__
        tops = [y0s[band[0]] if len(band) == 1 else min(map(top, band)) for band in bands]
        bottoms = [y1s[band[0]] if len(band) == 1 else max(map(bottom, band)) for band in bands]
        # Set off: by more than lines are from each other (a text layer's lines have gaps between
        # them, padded OCR boxes touch).
        gaps = sorted([top - bottom for bottom, top in zip(bottoms, tops[1:], strict=False)])
        usual = SET_OFF * gaps[len(gaps) // 2] if gaps else 0.0
        for ends in (range(len(bands) - 1), range(len(bands) - 1, 0, -1)):
            for k in ends:
                inner = k + 1 if ends.step > 0 else k - 1
                gap = tops[inner] - bottoms[k] if ends.step > 0 else tops[k] - bottoms[inner]
                small = len(bands[k]) <= HEAD_BOXES and bottoms[k] - tops[k] <= HEAD_LINES * self.line
                # Inside the outermost band, one whose boxes stand apart is a row of columns
                # (two figure captions side by side), not a footer.
                outermost = k in (0, len(bands) - 1)
                if not (small and gap >= (EDGE_GAP if outermost else HEAD_GAP) * self.line and gap > usual):
                    break
                if not outermost and len(self._coverage(bands[k])) > 1:
                    break
                found.add(k)
                (self.heads if ends.step > 0 else self.feet).update(bands[k])
        return found

    def _columns(self, items: list[int]) -> list[list[int]]:
        """The region's boxes split at its gutters, left to right; glyph columns joined to their text."""
        cover = self._column_coverage(items)
        if len(cover) < 2:
            return [items]
        starts = [lo for lo, _ in cover]
        columns: list[list[int]] = [[] for _ in cover]
        straddling: list[int] = []
        straddlers, lefts = self.straddlers, self.lefts
        for i in items:
            if i in straddlers:
                straddling.append(i)
            else:
                k = bisect_right(starts, lefts[i]) - 1
                columns[k if k > 0 else 0].append(i)
        columns = [c for c in columns if c]
        joined: list[list[int]] = []
        pending: list[int] = []
        for k, column in enumerate(columns):
            column = pending + column
            pending = []
            is_glyphs = all(len(self.texts[i].strip()) <= GLYPH_CHARS for i in column)
            if is_glyphs and k + 1 < len(columns) and starts[k + 1] - cover[k][1] < GLYPH_GAP:
                pending = column
                continue
            joined.append(column)
        if pending:
            joined.append(pending)
        return self._place_straddling(self._join_small(joined), straddling)

    def _place_straddling(self, columns: list[list[int]], straddling: list[int]) -> list[list[int]]:
        """Boxes across a gutter put by their left edge: into the column they start with (a title over
        it and the next), or as a block of their own after the column they start in (a figure's
        caption reaching into the next column is read after the column)."""
        if not straddling:
            return columns
        lefts = [min(map(self.x0s.__getitem__, c)) for c in columns]
        after: list[list[int]] = [[] for _ in columns]
        for i in straddling:
            x0 = self.rects[i][0]
            k = max(0, bisect_right(lefts, x0 + STRADDLE_ALIGN) - 1)
            if abs(x0 - lefts[k]) <= STRADDLE_ALIGN:
                columns[k].append(i)
            else:
                after[k].append(i)
        out: list[list[int]] = []
        for column, block in zip(columns, after, strict=True):
            out.append(column)
            if block:
                out.append(block)
        return out

    def _join_small(self, columns: list[list[int]]) -> list[list[int]]:
        """Columns of fewer than MIN_COLUMN_BOXES boxes joined to their neighbour: words apart on a line
        are not columns. An outer one set far apart (a margin note) stays."""
        if all(len(c) >= MIN_COLUMN_BOXES for c in columns):
            return columns
        out: list[list[int]] = []
        last = len(columns) - 1
        for k, column in enumerate(columns):
            if out and (len(column) < MIN_COLUMN_BOXES or len(out[-1]) < MIN_COLUMN_BOXES):
                outer = (k == last and len(column) < MIN_COLUMN_BOXES) or (k == 1 and len(out[-1]) < MIN_COLUMN_BOXES)
                gap = self._extent(column)[0] - self._extent(out[-1])[1]
                body = len(out[-1]) if k == last else len(column)
                far = gap >= MARGIN_GAP and body >= MIN_COLUMN_BOXES
                if not (outer and (far or (gap >= NOTE_GAP and body >= NOTE_BODY))):
                    out[-1] = out[-1] + column
                    continue
            out.append(column)
        return out

    def _extent(self, items: list[int]) -> tuple[float, float]:
        return min(map(self.x0s.__getitem__, items)), max(map(self.x1s.__getitem__, items))

    def _is_text(self, column: list[int], region_width: float) -> bool:
        if len(column) < MIN_COLUMN_BOXES:
            return False
        x0, x1 = self._extent(column)
        if x1 - x0 < MIN_COLUMN_SHARE * region_width:
            return False
        widths = sorted(map(self.widths.__getitem__, column))
        if widths[len(widths) // 2] >= MIN_COLUMN_FILL * (x1 - x0):
            return True
        lengths = sorted(map(self.lengths.__getitem__, column))
        return lengths[len(lengths) // 2] >= MIN_LINE_LENGTH

    def _is_table(self, columns: list[list[int]], text: list[bool], prose: list[bool]) -> bool:
        """Whether the columns (each a text column or not, and prose or not) are a table's, read row by row."""
        # Columns of a box or two (a stamp's letters, a stray mark) do not vote where others can.
        voters = [k for k, c in enumerate(columns) if len(c) >= MIN_COLUMN_BOXES] or list(range(len(columns)))
        if len(voters) < TABLE_COLUMNS:
            texts = [k for k in voters if text[k]]
            # Most columns of text, or one of long lines (a title block beside a figure's labels).
            if 2 * len(texts) > len(voters) or any(prose[k] for k in texts):
                return False
        tolerance = LINE_OVERLAP * self.line
        # Each box's centre, with its column, in one sorted list: a box sits level with a box of
        # another column where one lies within the tolerance of it (looked for on both sides).
        y0s, y1s = self.y0s, self.y1s
        centres = sorted(((y0s[i] + y1s[i]) / 2, k) for k, c in enumerate(columns) for i in c)
        last = len(centres) - 1
        level = 0
        for at, (y, k) in enumerate(centres):
            j = at - 1
            while j >= 0 and centres[j][0] >= y - tolerance:
                if centres[j][1] != k:
                    break
                j -= 1
            else:
                j = at + 1
                while j <= last and centres[j][0] <= y + tolerance:
                    if centres[j][1] != k:
                        break
                    j += 1
                else:
                    continue
            level += 1
        return level >= ROW_ALIGNED * len(centres)

    def _margins_last(self, columns: list[list[int]]) -> list[list[int]]:
        """Narrow outer columns beside a much wider one (margin notes) moved after the others."""
        if len(columns) < 2:
            return columns
        extents = [self._extent(c) for c in columns]
        x0, x1 = extents[0][0], extents[-1][1]
        widths = [b - a for a, b in extents]
        margin = MARGIN_SHARE * (x1 - x0)
        first = widths[0] < margin and widths[1] >= 2 * widths[0]
        last = widths[-1] < margin and widths[-2] >= 2 * widths[-1]
        if not (first or last):
            return columns
        body = columns[1 if first else 0 : len(columns) - 1 if last else len(columns)]
        if not body:
            return columns
        return body + ([columns[0]] if first else []) + ([columns[-1]] if last else [])


def _sparse_strips(
    starts: list[float], ends: list[float], allowed: int, within: tuple[float, float] | None = None
) -> Iterator[tuple[float, float, float, float]]:
    """Candidate gutters: each x-interval covered by at most ``allowed`` boxes, with its least covered part.

    ``starts`` and ``ends`` are the boxes' left and right edges, each list sorted (how many
    boxes cover a point needs only how many start and how many end before it).

    As (interval start, end, least covered part's start, end), left to right. The least covered
    part locates the gutter: around a gutter that a title crosses, the interval also takes in
    the ragged ends of the column's lines, and those lines must stay on their side.

    ``within``: only the intervals that reach from ``within[0]`` or further right to
    ``within[1]`` or further left (the same intervals as the whole search finds, no others).
    A gutter with enough boxes wholly on each side lies between the edges those boxes need,
    so the sweep starts and stops there, not at the page's edges.
    """
    # The box edges in x order, as indices: starts below len(starts), ends above (sorting floats
    # by key is quicker than sorting pairs, and two sorted runs merge in one pass). Edges at one
    # x may come in any order: a segment's depth is taken after the last of them.
    n = len(starts)
    xs = starts + ends
    order = sorted(range(2 * n), key=xs.__getitem__)
    reach, stop = within if within is not None else (-inf, inf)
    # Start where no interval can be open: after the last segment covered more than `allowed`
    # times that ends at or before `reach` (its depth counted from the sorted edges), or at the
    # first edge.
    depth = 0
    first = bisect_left(order, reach, key=xs.__getitem__) if reach > -inf else 0
    at = min(first, 2 * n - 1) - 1 if n else -1  # a segment ends at the edge after `at`
    while at >= 0:
        x = xs[order[at]]
        if xs[order[at + 1]] > x:
            covered = bisect_right(starts, x) - bisect_right(ends, x)
            if covered > allowed:
                depth = covered
                break
        at -= 1
    # One pass over the elementary segments between consecutive box edges (depth: how many boxes
    # cover one), keeping the current run's longest stretch at its least depth so far: a page's
    # strips are looked for on every region, and a list of segments walked twice costs more.
    least = 0
    start = end = lo = best_lo = best_hi = 0.0
    in_run = at_least = False  # in a run of sparse segments; in a stretch of it at its least depth
    resume: int | None = at  # the edge the sweep goes on after
    while resume is not None:
        edges, resume = islice(order, resume + 1, None), None
        for k, k_next in pairwise(edges):
            depth += 1 if k < n else -1
            x, next_x = xs[k], xs[k_next]
            if next_x <= x:
                continue
            if depth <= allowed:
                if not in_run or depth < least:
                    if not in_run:
                        in_run, start = True, x
                    least, lo, at_least = depth, x, True
                    best_lo = best_hi = x  # no stretch yet: any is longer
                elif depth == least:
                    if not at_least:
                        lo, at_least = x, True
                elif at_least:
                    if x - lo > best_hi - best_lo:
                        best_lo, best_hi = lo, x
                    at_least = False
                end = next_x
                continue
            if in_run:
                if at_least and end - lo > best_hi - best_lo:
                    best_lo, best_hi = lo, end
                if end >= reach and start <= stop:
                    yield start, end, best_lo, best_hi
                in_run = False
            elif x > stop:
                return  # every interval from here on starts right of `stop`
            if depth - allowed > SWEEP_SKIP:
                # Deep inside a column: the depth falls to `allowed` no sooner than the
                # (depth - allowed)-th right edge from here, so the sweep goes on from there, its
                # depth counted from the sorted edges (a column's lines are most of a sweep).
                target = ends[bisect_right(ends, x) + depth - allowed - 1]
                if target > stop:
                    return
                if target > next_x:
                    resume = bisect_left(order, target, key=xs.__getitem__) - 1
                    depth = bisect_left(starts, target) - bisect_left(ends, target)
                    break
    if in_run and end >= reach and start <= stop:
        if at_least and end - lo > best_hi - best_lo:
            best_lo, best_hi = lo, end
        yield start, end, best_lo, best_hi


def _displaced(order: list[int], weights: list[int]) -> float:
    """The share of the weight to move to read ``range(n)`` in ``order``: all but a heaviest increasing run.

    ``order`` is mostly stretches of consecutive boxes (a region keeps the layer's order inside).
    Any other box comes before or after all of a stretch both in the layer and in ``order``, so a
    heaviest run takes a stretch whole or not at all: the run is looked for over the stretches,
    each weighing its boxes' sum. A heaviest increasing subsequence of the stretches' positions,
    taking them in the layer's order and keeping a staircase: positions reached so far, each with
    the heaviest run ending at or before it (both increasing; a step no heavier than one to its
    left is dropped). n log n, with the searches and the steps' edits in C (bisect, list slices).
    """
    total = sum(weights)
    if total <= 0:
        return 0.0
    # Where a stretch starts in ``order``: its first box does not follow the box before it.
    firsts = [0, *(k for k, step in enumerate(map(sub, islice(order, 1, None), order), 1) if step != 1)]
    sums = [0, *accumulate(weights)]
    stretches = sorted(
        (order[k], k, sums[order[end - 1] + 1] - sums[order[k]])
        for k, end in zip(firsts, [*islice(firsts, 1, None), len(order)], strict=True)
    )
    keys: list[int] = []
    bests: list[int] = []
    for _, p, weight in stretches:
        # The heaviest run ending before this stretch's position, then this stretch on it.
        at = bisect_left(keys, p)
        run = (bests[at - 1] if at else 0) + weight
        end, n = at, len(bests)
        while end < n and bests[end] <= run:
            end += 1
        if end > at:
            keys[at:end] = [p]
            bests[at:end] = [run]
        else:
            keys.insert(at, p)
            bests.insert(at, run)
    return 1 - bests[-1] / total


def _keeps_gutters(
    joined: list[tuple[float, float]], gutters: list[tuple[float, float]], *parts: list[tuple[float, float]]
) -> bool:
    """Whether each of the region's ``gutters`` open in one of ``parts`` is still open in ``joined``.

    A line under two columns that starts inside their gutter (a centred address) closes it; a
    heading over one column leaves a wider gap than the gutter, and the column's lines under it
    narrow the gap back to the gutter, which stays open.
    """
    last = len(joined)
    for lo, hi in gutters:
        # As _open(joined, lo, hi), inline: most joins leave every gutter open.
        for k in range(1, last):
            if joined[k - 1][1] < hi and joined[k][0] > lo:
                break
        else:
            crossed = 0
            for part in parts:
                if _open(part, lo, hi):
                    return False
                crossed += _crosses(part, lo, hi)
            # A line across the gutter (a centred address) and lines beside it on one side
            # (a heading over one column): columns start below the line, not above it.
            if 0 < crossed < len(parts):
                return False
    return True


def _crosses(cover: list[tuple[float, float]], lo: float, hi: float) -> bool:
    """Whether an interval of ``cover`` reaches across part of the strip from ``lo`` to ``hi``."""
    for a, b in cover:  # noqa: SIM110
        if a < hi and b > lo:
            return True
    return False


def _within(inner: list[tuple[float, float]], outer: list[tuple[float, float]]) -> bool:
    """Whether each interval of ``inner`` lies inside one of ``outer``: ``outer`` closed with them is ``outer``."""
    for a, b in inner:
        for c, d in outer:
            if c <= a and b <= d:
                break
        else:
            return False
    return True


def _spread(cover: list[tuple[float, float]]) -> bool:
    """Whether each interval of ``cover`` starts MIN_GUTTER or more right of all before it (as in :func:`_close`)."""
    hi = cover[0][1]
    for a, b in islice(cover, 1, None):
        if a - hi < MIN_GUTTER:
            return False
        if b > hi:
            hi = b
    return True


def _open(cover: list[tuple[float, float]], lo: float, hi: float) -> bool:
    """Whether a gap between the intervals of ``cover`` overlaps the strip from ``lo`` to ``hi``."""
    # A plain loop, not any() over a generator: joining bands asks this of every gutter for every band.
    for k in range(1, len(cover)):  # noqa: SIM110
        if cover[k - 1][1] < hi and cover[k][0] > lo:
            return True
    return False


def _insert(cover: list[tuple[float, float]], span: tuple[float, float]) -> list[tuple[float, float]]:
    """``cover`` (closed, left to right) with one more interval, closed again (:func:`_close`)."""
    lo, hi = span
    out: list[tuple[float, float]] = []
    for a, b in cover:
        if b + MIN_GUTTER <= lo or hi + MIN_GUTTER <= a:
            out.append((a, b))
        else:  # touching: one interval now
            lo, hi = (a if a < lo else lo), (b if b > hi else hi)
    out.append((lo, hi))
    out.sort()
    return out


def _close(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Intervals merged where they overlap or leave less than MIN_GUTTER between them, left to right."""
    spans.sort()
    out: list[tuple[float, float]] = []
    if not spans:
        return out
    lo, hi = spans[0]
    for a, b in islice(spans, 1, None):
        if a - hi < MIN_GUTTER:
            if b > hi:
                hi = b
            continue
        out.append((lo, hi))
        lo, hi = a, b
    out.append((lo, hi))
    return out


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


# The helpers below run for every pair of boxes compared: they spell min and max out as
# conditionals that pick the same value (min(a, b) is b only where b < a).


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    overlap = (b1 if b1 < a1 else a1) - (b0 if b0 > a0 else a0)
    if not overlap > 0:
        return False
    a, b = a1 - a0, b1 - b0
    return overlap >= LINE_OVERLAP * (b if b < a else a)


def _centre_y(block: B) -> float:
    return (block.bbox[1] + block.bbox[3]) / 2


def _group_lines(blocks: list[B]) -> list[list[B]]:
    """Lines by vertical overlap, top to bottom; each line sorted left to right.

    A mark (:func:`_is_mark`: a footnote mark, an affiliation's symbol, a reference's superscript
    that OCR boxed apart from its word) is read in the line it overlaps, at its place from the
    left, even where it lies inside that line's box.
    """
    lines: list[list[B]] = []
    line_y0 = line_y1 = 0.0
    marks_only = False  # the last line holds marks only so far: its span is not yet a line's
    for block in sorted(blocks, key=_centre_y):
        y0, y1 = block.bbox[1], block.bbox[3]
        # Boxes of one line sit side by side: a box above or below one already in the line
        # starts the next line, however much the two overlap vertically (on a skewed scan the
        # box of a full-width line is taller than the line and overlaps the next one).
        if (
            lines
            and _overlaps(line_y0, line_y1, y0, y1)
            and not any(_stacked(block, other) and not _mark_of(block, other) for other in lines[-1])
        ):
            lines[-1].append(block)
            # Keep the line's own span (its first box) so a slanted line does not swallow the next;
            # a mark's span is not a line's (a superscript sits above the baseline).
            if marks_only and not _is_mark(block):
                line_y0, line_y1, marks_only = y0, y1, False
            continue
        lines.append([block])
        line_y0, line_y1 = y0, y1
        marks_only = _is_mark(block)
    return [line if len(line) == 1 else sorted(line, key=_left) for line in lines]


def _is_mark(block: B) -> bool:
    """A box of a character or two (GLYPH_CHARS): a footnote mark, a superscript, a bullet."""
    return 0 < len(block.text.strip()) <= GLYPH_CHARS


def _mark_of(a: B, b: B) -> bool:
    """Whether one of two boxes that overlap is a mark on the other: smaller type (MARK_SIZE), on its line."""
    if _is_mark(a) == _is_mark(b):
        return False
    mark, word = (a, b) if _is_mark(a) else (b, a)
    return mark.bbox[3] - mark.bbox[1] < MARK_SIZE * (word.bbox[3] - word.bbox[1])


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
