"""The drop folder's pure core: readiness, job ids, verdicts, target keys, notifications."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from producer.dropfolder import (
    DropFolderSettings,
    InboxObject,
    job_id_for,
    judge,
    notified_keys,
    skip_reason,
    target_key,
    whole_seconds,
)
from schemas.errors import ErrorCode

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def obj(key: str = "inbox/a.pdf", size: int = 1000, etag: str = "e1", age_s: float = 60) -> InboxObject:
    return InboxObject("pagewire", key, size, etag, whole_seconds(NOW - timedelta(seconds=age_s)))


def test_an_object_is_ready_once_it_has_bytes_and_has_been_quiet() -> None:
    assert skip_reason(obj(size=0), NOW, 5) == "empty"
    assert skip_reason(obj(age_s=2), NOW, 5) == "young"
    assert skip_reason(obj(key="inbox/sub/"), NOW, 5) == "folder"
    assert skip_reason(obj(age_s=5), NOW, 5) is None
    assert skip_reason(obj(age_s=0), None, 5) is None  # a notification: the upload is complete


def test_the_job_id_is_fixed_by_the_object_version() -> None:
    assert job_id_for(obj()) == job_id_for(obj())
    assert job_id_for(obj(etag="e2")) != job_id_for(obj())
    # identical bytes dropped again later under the same name: a new job
    assert job_id_for(obj(age_s=10)) != job_id_for(obj(age_s=60))
    assert job_id_for(obj(key="inbox/b.pdf")) != job_id_for(obj())


def test_the_listing_and_head_times_agree() -> None:
    listed = datetime(2026, 11, 24, 12, 0, 0, 573000, tzinfo=UTC)
    assert whole_seconds(listed) == whole_seconds(datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC))


def test_verdicts() -> None:
    assert judge(obj(), b"%PDF-1.7\n", 10_000) is None
    assert judge(obj(), b"\xef\xbb\xbf  %PDF-1.4", 10_000) is None  # junk before the header is allowed
    refused = judge(obj(), b"hello", 10_000)
    assert refused is not None and refused.code == ErrorCode.NOT_A_PDF
    too_big = judge(obj(size=20_000), None, 10_000)
    assert too_big is not None and too_big.code == ErrorCode.FILE_TOO_LARGE


def test_target_keys_carry_the_job_id_and_stay_valid() -> None:
    assert target_key("processed/", "J", "inbox/", "inbox/a/b.pdf") == "processed/J/a/b.pdf"
    assert target_key("failed/", "J", "inbox/", "inbox/../x.pdf") == "failed/J/source.pdf"
    assert target_key("processed/", "J", "inbox/", "inbox/" + "x" * 1100) == "processed/J/source.pdf"


def test_notifications_name_created_inbox_keys_only() -> None:
    def record(name: str, bucket: str, key: str) -> dict[str, object]:
        return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}

    body = json.dumps(
        {
            "Records": [
                record("s3:ObjectCreated:Put", "pagewire", "inbox/my+scan%281%29.pdf"),
                record("s3:ObjectCreated:CompleteMultipartUpload", "pagewire", "inbox/b.pdf"),
                record("s3:ObjectRemoved:Delete", "pagewire", "inbox/c.pdf"),
                record("s3:ObjectCreated:Put", "other", "inbox/d.pdf"),
                record("s3:ObjectCreated:Put", "pagewire", "processed/e.pdf"),
                {"eventName": "s3:ObjectCreated:Put"},
            ]
        }
    ).encode()
    assert notified_keys(body, "pagewire", "inbox/") == ["inbox/my scan(1).pdf", "inbox/b.pdf"]
    assert notified_keys(b"not json", "pagewire", "inbox/") == []


def test_targets_may_not_overlap_the_inbox() -> None:
    with pytest.raises(ValidationError):
        DropFolderSettings(inbox_prefix="inbox/", processed_prefix="inbox/done/")
    settings = DropFolderSettings(s3_bucket="pagewire")
    assert settings.bucket == "pagewire" and settings.notify_queue == "pagewire.dropfolder"
