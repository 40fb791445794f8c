"""The text layer as a witness: where a page has both a text layer and OCR, do their numbers agree?

OCR misreads digits in ways a reader does not notice (``8`` for ``3``, a lost
decimal point), and a text layer can disagree with what is printed (a form
filled after its layer was made, a scanner's poor OCR layer). On a page read
both ways, :func:`number_disagreements` lists the numbers (amounts with a
currency, dates, other numbers of two digits or more) that one text has and
the other does not, pairing a number with its nearest look-alike so a
misread shows as one row (``1,234.56`` against ``1,284.56``), not two.

Numbers are compared by value, not by spelling: ``1,234.56``, ``1234.56`` and
``1.234,56`` are the same amount, and ``05/03/2024`` equals ``05.03.2024``.
A pure function of two strings: no pdfium, no OCR.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

__all__ = ["NumberToken", "extract_numbers", "number_disagreements"]

_CURRENCY_SIGNS = "$€£¥₹"
_CURRENCY_CODES = "USD|EUR|GBP|CHF|JPY|CAD|AUD|CNY|INR|RUB"
# A number as written: digits, with thousands or decimal separators between digit groups.
_NUMBER = r"\d+(?:[.,'\u00a0\u202f]\d+)*"
_PATTERN = re.compile(
    rf"""
    (?P<date>\b\d{{4}}-\d{{1,2}}-\d{{1,2}}\b|\b\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{2,4}}\b)
    | (?P<currency>(?:[{_CURRENCY_SIGNS}]|\b(?:{_CURRENCY_CODES})\b)\s?-?{_NUMBER}
                  |{_NUMBER}\s?(?:[{_CURRENCY_SIGNS}]|\b(?:{_CURRENCY_CODES})\b))
    | (?P<number>{_NUMBER})
    """,
    re.VERBOSE,
)
# Plain numbers shorter than this many digits are left out: list numbers, footnote marks
# and page numbers would flag on every page where OCR drops a superscript.
MIN_NUMBER_DIGITS = 2
# Two leftover numbers pair as a misread when their values differ in at most this share of characters.
PAIR_DISTANCE = 0.5


@dataclass(frozen=True)
class NumberToken:
    """A number found in a text: its kind, its spelling, its value, and where it starts."""

    kind: str
    """``currency``, ``date`` or ``number``."""
    text: str
    value: str
    """The value the comparison uses (separators normalised, currency code or sign kept)."""
    offset: int


def _number_value(spelled: str) -> str:
    """Digits with one ``.`` for a decimal part: a last separator followed by 1 or 2 digits is decimal, others group."""
    groups = re.split(r"[.,'\u00a0\u202f]", spelled)
    if len(groups) > 1 and 1 <= len(groups[-1]) <= 2:
        return "".join(groups[:-1]) + "." + groups[-1]
    return "".join(groups)


def _currency_unit(spelled: str) -> str:
    sign = next((c for c in spelled if c in _CURRENCY_SIGNS), "")
    code = re.search(rf"{_CURRENCY_CODES}", spelled)
    return sign or (code.group(0) if code else "")


def extract_numbers(text: str) -> list[NumberToken]:
    """The numbers of a text in order: dates, amounts with a currency, and other numbers of 2 digits or more."""
    tokens = []
    for match in _PATTERN.finditer(text):
        kind = match.lastgroup or "number"
        spelled = match.group(0)
        if kind == "date":
            value = "-".join(str(int(part)) for part in re.split(r"[./-]", spelled))
        elif kind == "currency":
            digits = re.search(_NUMBER, spelled)
            minus = "-" if "-" in spelled else ""
            value = f"{_currency_unit(spelled)} {minus}{_number_value(digits.group(0)) if digits else ''}"
        else:
            if sum(c.isdigit() for c in spelled) < MIN_NUMBER_DIGITS:
                continue
            value = _number_value(spelled)
        tokens.append(NumberToken(kind=kind, text=spelled, value=value, offset=match.start()))
    return tokens


def number_disagreements(text_layer: str, ocr_text: str) -> list[dict[str, object]]:
    """The numbers the text layer and OCR disagree on, for a page read both ways.

    Each disagreement is a dict, ready for an event field or a JSONB column:

    * ``kind``: ``currency``, ``date`` or ``number`` (the text layer's kind where both have one);
    * ``text_layer`` / ``ocr``: the number as each text spells it, or None where that text lacks it;
    * ``text_layer_offset`` / ``ocr_offset``: where it starts in each text, or None.

    Numbers are matched by value as multisets, so order (OCR reads columns in
    its own order) does not matter and a number printed twice must be read
    twice. The leftovers are paired, closest value first, when they are of
    the same kind and differ in at most half their characters (a misread);
    the rest stand alone (a number one side dropped or invented). Ordered by
    position in the text layer, then in the OCR text.
    """
    layer_tokens = extract_numbers(text_layer)
    ocr_tokens = extract_numbers(ocr_text)
    common = Counter(t.value for t in layer_tokens) & Counter(t.value for t in ocr_tokens)
    layer_left = _leftover(layer_tokens, common)
    ocr_left = _leftover(ocr_tokens, common)
    pairs: list[tuple[NumberToken | None, NumberToken | None]] = []
    candidates = sorted(
        (Levenshtein.normalized_distance(a.value, b.value), i, j)
        for i, a in enumerate(layer_left)
        for j, b in enumerate(ocr_left)
        if a.kind == b.kind
    )
    used_layer: set[int] = set()
    used_ocr: set[int] = set()
    for distance, i, j in candidates:
        if distance > PAIR_DISTANCE or i in used_layer or j in used_ocr:
            continue
        used_layer.add(i)
        used_ocr.add(j)
        pairs.append((layer_left[i], ocr_left[j]))
    pairs += [(t, None) for i, t in enumerate(layer_left) if i not in used_layer]
    pairs += [(None, t) for j, t in enumerate(ocr_left) if j not in used_ocr]
    pairs.sort(key=lambda p: (p[0].offset if p[0] else len(text_layer), p[1].offset if p[1] else -1))
    return [_row(a, b) for a, b in pairs]


def _row(a: NumberToken | None, b: NumberToken | None) -> dict[str, object]:
    kind = a.kind if a is not None else b.kind if b is not None else "number"
    return {
        "kind": kind,
        "text_layer": a.text if a else None,
        "ocr": b.text if b else None,
        "text_layer_offset": a.offset if a else None,
        "ocr_offset": b.offset if b else None,
    }


def _leftover(tokens: list[NumberToken], common: Counter[str]) -> list[NumberToken]:
    """The tokens not matched by value: each value's first ``common[value]`` occurrences are matched."""
    remaining = Counter(common)
    left = []
    for token in tokens:
        if remaining[token.value] > 0:
            remaining[token.value] -= 1
        else:
            left.append(token)
    return left
