"""Objects written as they are made, against the real S3 server: in parts past one part's size."""

from __future__ import annotations

import io
import os
import uuid

import pytest

from adapters.storage import Storage
from schemas.errors import PermanentError
from schemas.settings import Settings

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def storage(pagewire_settings: Settings) -> Storage:
    storage = Storage(pagewire_settings)
    storage.ensure_bucket(pagewire_settings.s3_bucket)
    return storage


def test_an_object_larger_than_a_part_is_sent_in_parts_as_it_is_written(storage: Storage) -> None:
    bucket, key = storage.settings.s3_bucket, f"t/{uuid.uuid4()}"
    data = os.urandom(12 * MIB + 123)
    with storage.writer(bucket, key, "application/octet-stream", part_bytes=5 * MIB) as writer:
        for start in range(0, len(data), MIB):
            writer.write(data[start : start + MIB])
        # Two full parts are in S3 before the object is finished; only the rest is held
        assert len(writer.parts) == 2 and len(writer.buffer) == 2 * MIB + 123
        with pytest.raises(PermanentError):
            storage.head(bucket, key)  # nothing under the key until it is finished
        etag = writer.close()
    assert storage.get_bytes(bucket, key) == data
    assert storage.head(bucket, key).etag == etag


def test_an_object_smaller_than_a_part_goes_in_one_put(storage: Storage) -> None:
    bucket, key = storage.settings.s3_bucket, f"t/{uuid.uuid4()}"
    with storage.writer(bucket, key, "text/plain", part_bytes=5 * MIB) as writer:
        writer.write(b"small ")
        writer.write(b"object")
        writer.close()
    assert writer.upload_id is None and not writer.parts
    assert storage.get_bytes(bucket, key) == b"small object"


def test_an_object_left_on_an_exception_is_never_visible(storage: Storage) -> None:
    bucket, key = storage.settings.s3_bucket, f"t/{uuid.uuid4()}"
    with pytest.raises(RuntimeError), storage.writer(bucket, key, "text/plain", part_bytes=5 * MIB) as writer:
        writer.write(os.urandom(6 * MIB))
        assert writer.parts
        raise RuntimeError("the job's pages could not be read")
    assert writer.upload_id is None
    with pytest.raises(PermanentError):
        storage.head(bucket, key)
    uploads = storage.client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert uploads == []


def test_a_file_is_stored_from_its_position_in_parts(storage: Storage) -> None:
    bucket, key = storage.settings.s3_bucket, f"t/{uuid.uuid4()}"
    data = os.urandom(17 * MIB)
    file = io.BytesIO(b"skipped" + data)
    file.seek(len(b"skipped"))
    etag = storage.put_file(bucket, key, file, "application/pdf")
    assert storage.get_bytes(bucket, key) == data
    assert etag == storage.head(bucket, key).etag and etag.endswith("-4")  # parts of 5 MiB
