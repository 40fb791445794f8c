"""The mark that opens a list item: a square, box or disc before a line's first word.

rapidocr's recognition model reads letters and most punctuation, but it drops
the glyphs lists are marked with (a hollow or filled square, a check box, a
large disc) or reads them as a stray bracket, so a bulleted list comes out as
bare lines. Such a mark is easy to see where letters are not: one blob, square
in its proportions, about as tall as the letters, alone in its columns, with
a word's space after it. :func:`line_marks` finds it for each line of a page
and names it; :func:`with_mark` puts it in front of the line's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FILLED_SQUARE = "■"
BOX = "☐"
SHADOWED_BOX = "❑"
DISC = "•"
LARGE_DISC = "●"
# The confidence of a mark that detection boxed by itself and the model read as nothing (its
# shape, not the model, says what it is); above rapidocr's cut-off, so the mark is kept.
MARK_SCORE = 0.9

# What the model writes where it does see a list mark: kept as read.
MARK_CHARACTERS = frozenset("•●■□☐▪▫❑◦○◆◇►▶➢➤✓✔☑✗✘-–—*·")
# Characters a line may open with that are not a misread mark.
_OPENERS = frozenset("([{\"'“‘«$€£#§¶@&%+¿¡")

_MIN_CONTRAST = 60  # grey levels between the paper and the darkest ink
_INK_AT = 0.35  # ink is darker than the paper by this share of the contrast


def _components(ink: npt.NDArray[np.bool_]) -> list[tuple[int, int, int, int, int]]:
    """The 8-connected blobs of ``ink`` as (left, top, width, height, area), left to right."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    blobs = [tuple(int(v) for v in stats[i][:5]) for i in range(1, count)]
    return sorted(blobs)  # type: ignore[arg-type]


def _side(mask: npt.NDArray[np.bool_]) -> tuple[float, int]:
    """How much of a box's top side (the first rows of ``mask``) is drawn, as the share of its
    columns with ink in the outer fifth, and how many of its rows, from the outside in, are more
    than half ink (its thickness). Turn the mask to measure the other sides."""
    band = mask[: max(2, mask.shape[0] // 5)]
    coverage = float(band.any(axis=0).mean())
    thickness = 0
    for row in mask[: mask.shape[0] // 2]:
        if row.mean() <= 0.5:
            if thickness:
                break
            continue
        thickness += 1
    return coverage, thickness


def _corners(mask: npt.NDArray[np.bool_], size: int) -> list[npt.NDArray[np.bool_]]:
    return [mask[:size, :size], mask[:size, -size:], mask[-size:, :size], mask[-size:, -size:]]


def _shape(mask: npt.NDArray[np.bool_], letter: float) -> str | None:
    """The mark a blob's own pixels (its bounding box) draw, or None where it is none of them;
    ``letter`` is the height of the tall letters after it (0: none): a disc as tall is a large one."""
    height, width = mask.shape
    fill = float(mask.mean())
    if fill >= 0.9:
        return FILLED_SQUARE
    inset = max(1, round(min(height, width) * 0.3))
    inner = mask[inset : height - inset, inset : width - inset]
    inner_ink = float(inner.mean()) if inner.size else 1.0
    if fill >= 0.72 and inner_ink >= 0.9:
        tip = max(1, min(height, width) // 6)
        if np.mean([corner.mean() for corner in _corners(mask, tip)]) < 0.25:
            return LARGE_DISC if height >= 0.9 * letter > 0 else DISC
    patch = max(2, min(height, width) // 5)
    corners_inked = sum(bool(corner.any()) for corner in _corners(mask, patch))
    if inner_ink > 0.15 or corners_inked < 4 or min(height, width) < 6:
        return None
    top, left = _side(mask), _side(mask.T)
    bottom, right = _side(mask[::-1]), _side(mask.T[::-1])
    if min(side[0] for side in (top, bottom, left, right)) < 0.8:
        return None
    light, heavy = top[1] + left[1], bottom[1] + right[1]
    if heavy >= 2 * light and heavy >= light + max(3, min(height, width) // 4):
        return SHADOWED_BOX
    return BOX


@dataclass(frozen=True)
class LineMark:
    """A list mark found for one detected line: ``opens`` the line's text; ``alone``, the line is
    the mark, boxed by itself; ``taken``, the line is a mark boxed by itself that the line to its
    right opens with, so it reads as nothing."""

    char: str
    role: Literal["opens", "alone", "taken"]


@dataclass(frozen=True)
class _Found:
    char: str
    left: int  # the mark's columns in the crop
    right: int
    alone: bool  # nothing else in the line's box


Rectangle = tuple[int, int, int, int]  # left, top, right, bottom


def line_marks(
    page: npt.NDArray[np.uint8], boxes: Sequence[npt.NDArray[np.float32]], skip: Sequence[bool]
) -> list[LineMark | None]:
    """The list mark of each text line of ``page`` (its detection box, four corners), or None;
    lines where ``skip`` is true (those that run up or down the page) are not looked at.

    A line's mark is looked for from three line heights before its box
    (detection often leaves a mark out, or cuts it, and a hanging indent sets
    it a tab before the words) to a few heights into it.
    What other lines' boxes hold there (the end of a neighbouring column's
    line, the lines above and below) is not a mark and is left out, except a
    box that holds a mark alone: that mark goes to the line it opens.
    """
    corners = np.asarray([[b[:, 0].min(), b[:, 1].min(), b[:, 0].max(), b[:, 1].max()] for b in boxes])
    regions = [None if skipped else _region(page, box) for box, skipped in zip(corners, skip, strict=True)]

    def near(index: int, region: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
        """The other boxes that reach into a line's region before its box starts."""
        left, top, bottom = region
        start = corners[index][0]
        found = (corners[:, 0] < int(start)) & (corners[:, 2] > left) & (corners[:, 1] < bottom) & (corners[:, 3] > top)
        found[index] = False
        return found

    def look(index: int, lone: npt.NDArray[np.bool_]) -> _Found | None:
        region = regions[index]
        if region is None:
            return None
        left, top, bottom = region
        start, end = int(corners[index][0]), int(np.ceil(corners[index][2]))
        covered = [
            (max(0, int(x0) - left), max(0, int(y0) - top), min(start, int(np.ceil(x1))) - left, int(np.ceil(y1)) - top)
            for x0, y0, x1, y1 in corners[near(index, region) & ~lone]
        ]
        right = min(page.shape[1], start + 4 * (bottom - top))
        return _find(page[top:bottom, left:right], covered, end - left)

    nobody = np.zeros(len(corners), dtype=bool)
    found = [look(index, nobody) for index in range(len(corners))]
    lone = np.array([f is not None and f.alone for f in found], dtype=bool)
    if lone.any():
        # A line beside a lone mark looks again with that box's pixels in view; the others would
        # see what they saw.
        for index in np.flatnonzero(~lone):
            region = regions[index]
            if region is not None and (near(int(index), region) & lone).any():
                found[index] = look(int(index), lone)
    marks: list[LineMark | None] = [
        None if f is None else LineMark(f.char, "alone" if f.alone else "opens") for f in found
    ]
    for index in np.flatnonzero(lone):
        x0, x1 = corners[index][0], corners[index][2]
        for other, f in enumerate(found):
            region = regions[other]
            if f is None or f.alone or region is None:
                continue
            middle = region[0] + (f.left + f.right) / 2
            if x0 <= middle <= x1 and region[1] <= (corners[index][1] + corners[index][3]) / 2 <= region[2]:
                marks[index] = LineMark(f.char, "taken")
    return marks


def _region(page: npt.NDArray[np.uint8], box: npt.NDArray[np.float32]) -> tuple[int, int, int] | None:
    """Where a line's mark may be: its left column on the page, its top and bottom rows."""
    top, bottom = max(0, int(box[1])), min(page.shape[0], int(np.ceil(box[3])))
    if bottom - top < 8:
        return None
    return max(0, int(box[0]) - 3 * (bottom - top)), top, bottom


def leading_mark(crop: npt.NDArray[np.uint8], covered: Sequence[Rectangle] = ()) -> str | None:
    """The list mark at the start of a horizontal line's crop (grey or BGR), or None; ``covered``
    are rectangles of the crop that hold other text, not looked at (:func:`_find`)."""
    found = _find(crop, covered, crop.shape[1])
    return None if found is None else found.char


def _find(crop: npt.NDArray[np.uint8], covered: Sequence[Rectangle], end: int) -> _Found | None:
    """The list mark at the start of ``crop``, whose line's box ends at column ``end``.

    The first blob from the left must stand alone in its columns, be about
    square (3:4 to 4:3), between a third and one and a half times the height
    of the letters after it, sit in the middle of their height, and be
    followed by a space of at least a third of a letter's height and then a
    letter; then its pixels say which mark it is (:func:`_shape`). A mark
    with nothing after it in its line's box is one that detection boxed by
    itself.
    """
    grey = crop.mean(axis=2) if crop.ndim == 3 else crop.astype(np.float32)
    height = grey.shape[0]
    if height < 8:
        return None
    # The mark is near the start: looking at a few heights' worth of columns keeps it cheap.
    grey = grey[:, : 8 * height]
    paper, darkest = np.percentile(grey, 90), np.percentile(grey, 1)
    if paper - darkest < _MIN_CONTRAST:
        return None
    ink = grey < paper - _INK_AT * (paper - darkest)
    for x0, y0, x1, y1 in covered:
        ink[y0:y1, x0:x1] = False
    # What the crop's edges cut (a column's rule, the line above, a neighbour's last letter) is
    # not the mark, nor text that follows it.
    blobs = [b for b in _components(ink) if b[4] >= 3 and b[0] > 0 and b[1] > 0 and b[1] + b[3] < height]
    if not blobs:
        return None
    left, top, width, tall, _ = blobs[0]
    right = left + width
    others = blobs[1:]
    if any(b[0] < right for b in others):
        return None  # something shares its columns: part of a letter, or a mark with a label on it
    if not 0.75 <= width / tall <= 4 / 3 or tall < 4:
        return None
    letter = tallest = 0.0
    if others:
        median = float(np.median([b[3] for b in others if b[3] >= 0.3 * height] or [0]))
        letters = [b for b in others if 0.5 * median <= b[3] <= 1.6 * median]
        if not letters or others[0] is not letters[0]:
            return None  # what follows is not a letter: a figure, a rule, a speck
        letter = float(np.median([b[3] for b in letters]))
        # Capitals and ascenders, not the median letter, tell a large disc: beside a line of
        # mostly small letters a small disc looks large.
        tallest = float(np.percentile([b[3] for b in letters], 80))
        letter_top = min(b[1] for b in letters)
        letter_bottom = max(b[1] + b[3] for b in letters)
        band = letter_bottom - letter_top
        middle = top + tall / 2
        if not 0.3 * letter <= tall <= 1.5 * letter:
            return None
        if not letter_top + 0.15 * band <= middle <= letter_bottom - 0.15 * band:
            return None
        if others[0][0] - right < max(2.0, letter / 3):
            return None
    elif tall < 0.3 * height:
        return None
    char = _shape(ink[top : top + tall, left:right], tallest)
    if char is None:
        return None
    return _Found(char, left, right, alone=not others or others[0][0] >= end)


def with_mark(text: str, mark: str | None) -> str:
    """``text`` opened by ``mark`` and a space: where the model already wrote a mark it is kept, and
    where it wrote some other sign for it (a bracket, a stray symbol) that sign gives way."""
    if mark is None:
        return text
    body = text.lstrip()
    if not body:
        return mark
    first = body[0]
    if first in MARK_CHARACTERS:
        rest = body[1:]
        return f"{first} {rest.lstrip()}" if rest.strip() else first
    if not first.isalnum() and first not in _OPENERS:
        body = body[1:].lstrip()
    return f"{mark} {body}" if body else mark
