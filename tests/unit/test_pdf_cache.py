"""The local PDF cache: a named etag cached asks S3 nothing, a new etag is a new file, the oldest files go over budget.

S3 is stood in for by a dict of objects; the cache's files are real files in a temporary folder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from adapters.storage import ObjectInfo, PdfCache, Storage
from schemas.errors import ErrorCode, PermanentError
from schemas.messages import Source


class Body(io.BytesIO):
    """An object's body as boto3 hands it over: read (or not), then closed."""

    def __init__(self, data: bytes, reads: list[int]) -> None:
        super().__init__(data)
        self.reads = reads

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.reads.append(len(chunk))
        return chunk


class Objects:
    """Stands in for :class:`adapters.storage.Storage`: objects in memory, requests and bytes read counted."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        self.reads: list[int] = []
        self.bodies: list[Body] = []

    def check_source(self, source: Source) -> None:
        pass

    def open(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        self.requests.append(key)
        data, etag = self.objects[key]
        self.bodies.append(Body(data, self.reads))
        return ObjectInfo(size=len(data), etag=etag), self.bodies[-1]

    save = staticmethod(Storage.save)


def source(key: str, etag: str | None = None) -> Source:
    return Source(bucket="pagewire", key=key, etag=etag)


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
    # Without an etag named, each fetch asks S3 (one GET); a body already cached is not read.
    assert s3.requests == ["a.pdf", "a.pdf", "a.pdf"]
    assert sum(s3.reads) == len(b"%PDF-1 a") + len(b"%PDF-1 a, replaced")
    assert all(body.closed for body in s3.bodies)


def test_a_source_naming_a_cached_etag_asks_s3_nothing_and_gets_that_version(tmp_path: Path) -> None:
    s3 = Objects()
    cache = PdfCache(s3, tmp_path, max_bytes=10_000, max_pdf_bytes=1_000)  # type: ignore[arg-type]
    s3.objects["a.pdf"] = (b"%PDF-1 a", "e1")
    path, etag = cache.fetch_version(source("a.pdf"))
    assert etag == "e1" and s3.requests == ["a.pdf"]

    # The object is replaced; a task naming the version its planner counted still reads that one.
    s3.objects["a.pdf"] = (b"%PDF-1 a, replaced", "e2")
    assert cache.fetch_version(source("a.pdf", etag="e1")) == (path, "e1")
    assert s3.requests == ["a.pdf"]

    # Naming the new etag, not cached yet: one GET, and the new version.
    newer, etag = cache.fetch_version(source("a.pdf", etag="e2"))
    assert etag == "e2" and newer.read_bytes() == b"%PDF-1 a, replaced"
    assert s3.requests == ["a.pdf", "a.pdf"]


@pytest.mark.parametrize(("data", "code"), [(b"x" * 1_001, ErrorCode.FILE_TOO_LARGE), (b"", ErrorCode.EMPTY_FILE)])
def test_an_object_too_large_or_empty_is_refused_before_its_body_is_read(
    tmp_path: Path, data: bytes, code: ErrorCode
) -> None:
    s3 = Objects()
    cache = PdfCache(s3, tmp_path, max_bytes=10_000, max_pdf_bytes=1_000)  # type: ignore[arg-type]
    s3.objects["big.pdf"] = (data, "e")

    with pytest.raises(PermanentError) as caught:
        cache.fetch(source("big.pdf"))

    assert caught.value.code == code
    assert s3.reads == [] and s3.bodies[0].closed
    assert list(tmp_path.iterdir()) == []


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
