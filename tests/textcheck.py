"""Character error rate against the corpus's expected text."""

from __future__ import annotations

import json
from pathlib import Path

from rapidfuzz.distance import Levenshtein


def normalise(text: str) -> str:
    """Whitespace folded to single spaces: layout differences are not reading errors."""
    return " ".join(text.split())


def cer(expected: str, actual: str) -> float:
    """Edit distance over the expected length, on whitespace-normalised text (0 is exact)."""
    return Levenshtein.normalized_distance(normalise(expected), normalise(actual))


def expected_pages(corpus: Path, name: str) -> list[str]:
    """The expected text per page of a corpus file, from its manifest entry."""
    manifest = json.loads((corpus / "manifest.json").read_text())
    entry = next(e for e in manifest if e["file"] == name)
    return list(json.loads((corpus / entry["expected"]).read_text()))
