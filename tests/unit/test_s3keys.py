"""Key and bucket checks for every S3 location a job names."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode, PermanentError
from schemas.s3keys import result_key, source_key, validate_bucket, validate_key


def test_layout() -> None:
    assert source_key("abc") == "jobs/abc/source.pdf"
    assert result_key("abc", "md") == "jobs/abc/result.md"


@pytest.mark.parametrize("key", ["inbox/a.pdf", "jobs/x/source.pdf", "a b/ü.pdf"])
def test_good_keys_pass(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "../a.pdf", "a/../b.pdf", "/abs.pdf", "a\x00b.pdf", "a\\b.pdf", "./a.pdf", "x" * 1025, "é" * 513]
)
def test_bad_keys_fail_with_invalid_key(key: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_key(key)
    assert caught.value.code == ErrorCode.INVALID_KEY


def test_bucket_allowlist() -> None:
    assert validate_bucket("pagewire", frozenset({"pagewire"})) == "pagewire"
    with pytest.raises(PermanentError) as caught:
        validate_bucket("other", frozenset({"pagewire"}))
    assert caught.value.code == ErrorCode.BUCKET_NOT_ALLOWED
