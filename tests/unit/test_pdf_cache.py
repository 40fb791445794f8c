"""The local PDF cache: a hit downloads nothing, a new etag is a new file, the oldest files go over budget.

S3 is stood in for by a dict of objects; the cache's files are real files in a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from consumer.storage import ObjectInfo, PdfCache
from schemas.messages import Source


class Objects:
    """Stands in for :class:`consumer.storage.Storage`: objects in memory, downloads counted."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.downloads: list[str] = []

    def check_source(self, source: Source) -> None:
        pass

    def head(self, bucket: str, key: str) -> ObjectInfo:
        data, etag = self.objects[key]
        return ObjectInfo(size=len(data), etag=etag)

    def download(self, bucket: str, key: str, target: Path) -> None:
        self.downloads.append(key)
        target.write_bytes(self.objects[key][0])


def source(key: str) -> Source:
    return Source(bucket="pagewire", key=key)


def test_a_cached_pdf_is_not_downloaded_again_and_a_new_etag_is(tmp_path: Path) -> None:
    s3 = Objects()
    cache = PdfCache(s3, tmp_path, max_bytes=10_000, max_pdf_bytes=1_000)  # type: ignore[arg-type]
    s3.objects["a.pdf"] = (b"%PDF-1 a", "e1")

    first = cache.fetch(source("a.pdf"))
    again = cache.fetch(source("a.pdf"))
    s3.objects["a.pdf"] = (b"%PDF-1 a, replaced", "e2")
    replaced = cache.fetch(source("a.pdf"))

    assert first == again and replaced != first
    assert replaced.read_bytes() == b"%PDF-1 a, replaced"
    assert s3.downloads == ["a.pdf", "a.pdf"]


def test_over_budget_the_oldest_files_go_down_to_the_low_water_mark(tmp_path: Path) -> None:
    s3 = Objects()
    for name in "abcde":
        s3.objects[f"{name}.pdf"] = (b"x" * 100, name)
    cache = PdfCache(s3, tmp_path, max_bytes=450, max_pdf_bytes=1_000)  # type: ignore[arg-type]

    paths = []
    for age, name in enumerate("abcd"):
        paths.append(cache.fetch(source(f"{name}.pdf")))
        os.utime(paths[-1], (1_000 + age, 1_000 + age))  # a, b, c, d from oldest to newest
    assert all(p.exists() for p in paths)  # 400 bytes: under 450

    # The fifth takes it to 500: the oldest go until 360 (0.8 of 450) or less is left.
    newest = cache.fetch(source("e.pdf"))

    assert [p.exists() for p in paths] == [False, False, True, True]
    assert newest.exists()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.pdf")) == 300


def test_a_cache_folder_left_by_an_earlier_run_counts_towards_the_budget(tmp_path: Path) -> None:
    (tmp_path / "old.pdf").write_bytes(b"x" * 400)
    os.utime(tmp_path / "old.pdf", (1_000, 1_000))
    s3 = Objects()
    s3.objects["new.pdf"] = (b"y" * 100, "n")
    cache = PdfCache(s3, tmp_path, max_bytes=450, max_pdf_bytes=1_000)  # type: ignore[arg-type]

    kept = cache.fetch(source("new.pdf"))

    assert kept.exists() and not (tmp_path / "old.pdf").exists()
