"""The S3 adapter and the worker's on-disk PDF cache.

boto3 is blocking: every call here is meant to run through ``asyncio.to_thread``.
S3 failures are sorted into the error tree: a missing object is permanent
(``source_missing``), an unreachable endpoint is retryable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from schemas.errors import ErrorCode, PermanentError, RetryableError
from schemas.messages import Source
from schemas.s3keys import validate_bucket, validate_key
from schemas.settings import Settings

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}

PART_BYTES = 5 * 1024 * 1024
"""A part of an object written as it is made: the least S3 takes (but for the last part), so the least
memory; 10,000 parts, S3's most, make an object of 50 GB."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str

    @classmethod
    def of(cls, response: Mapping[str, Any]) -> ObjectInfo:
        """Size and etag from the headers of a HEAD or GET response (S3 quotes etags)."""
        return cls(size=int(response["ContentLength"]), etag=str(response.get("ETag", "")).strip('"'))


def _translate(exc: Exception, bucket: str, key: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            return PermanentError(ErrorCode.SOURCE_MISSING, f"s3://{bucket}/{key} does not exist")
        if code in {"403", "AccessDenied"}:
            return PermanentError(ErrorCode.SOURCE_MISSING, f"s3://{bucket}/{key} is not readable (access denied)")
    return RetryableError(ErrorCode.STORAGE_UNAVAILABLE, f"S3 error on s3://{bucket}/{key}: {exc}")


class Storage:
    """A thin, typed face of the S3 calls pagewire makes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
        )

    def check_source(self, source: Source) -> None:
        """Key and bucket checks every job passes before anything is fetched."""
        validate_bucket(source.bucket, self.settings.allowed_buckets)
        validate_key(source.key)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, bucket, key) from exc
        return ObjectInfo.of(response)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, bucket, key) from exc

    def open(self, bucket: str, key: str) -> tuple[ObjectInfo, StreamingBody]:
        """One GET: the object's size and etag, and its body still to be read (the caller closes it).

        The size comes from the response's headers, so a caller can refuse the object
        before a byte of it is read; no HEAD first (boto3's download_file adds one and
        a thread pool, which cost more CPU than a PDF's transfer on loopback).
        """
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, bucket, key) from exc
        return ObjectInfo.of(response), response["Body"]

    @staticmethod
    def save(body: StreamingBody, target: Path, bucket: str, key: str) -> None:
        """Stream an opened object's body into ``target``."""
        try:
            with target.open("wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, bucket, key) from exc

    def put_bytes(self, bucket: str, key: str, data: bytes | bytearray, content_type: str) -> str:
        """Store ``data``; returns the new object's etag."""
        try:
            response = self.client.put_object(Bucket=bucket, Key=key, Body=cast(bytes, data), ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(ErrorCode.STORAGE_UNAVAILABLE, f"cannot write s3://{bucket}/{key}: {exc}") from exc
        return str(response.get("ETag", "")).strip('"')

    def put_file(self, bucket: str, key: str, file: BinaryIO, content_type: str) -> str:
        """Store what ``file`` holds from where it stands, read a part at a time (:class:`ObjectWriter`);
        returns the new object's etag. Memory holds a part or two, never the file."""
        with self.writer(bucket, key, content_type) as out:
            while chunk := file.read(PART_BYTES):
                out.write(chunk)
            return out.close()

    def writer(self, bucket: str, key: str, content_type: str, part_bytes: int = PART_BYTES) -> ObjectWriter:
        """An object to write as it is made (:class:`ObjectWriter`)."""
        return ObjectWriter(self, bucket, key, content_type, part_bytes)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)


class ObjectWriter:
    """An S3 object written as it is made, in parts of ``part_bytes`` (a multipart upload).

    Memory holds one part whatever the object's size. An object smaller than a part goes in one
    PUT at :meth:`close`, as a multipart upload of one part would cost three requests. Nothing is
    visible under the key until :meth:`close` returns; :meth:`abort` (or leaving a ``with`` block
    on an exception) drops the parts sent. Blocking, like every call here.
    """

    def __init__(self, storage: Storage, bucket: str, key: str, content_type: str, part_bytes: int) -> None:
        self.storage = storage
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        self.part_bytes = part_bytes
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[CompletedPartTypeDef] = []
        self.size = 0

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abort()

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= self.part_bytes:
            part = self.buffer[: self.part_bytes]
            del self.buffer[: self.part_bytes]
            self._send(part)

    def close(self) -> str:
        """Finish the object; returns its etag."""
        if self.upload_id is None:
            return self.storage.put_bytes(self.bucket, self.key, self.buffer, self.content_type)
        if self.buffer:
            self._send(self.buffer)
            self.buffer = bytearray()
        try:
            response = self.storage.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(exc) from exc
        self.upload_id = None
        return str(response.get("ETag", "")).strip('"')

    def abort(self) -> None:
        """Drop the parts sent so far (best effort: a bucket lifecycle rule is the net for the rest)."""
        self.buffer.clear()
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            self.storage.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not abort the upload of s3://%s/%s: %s", self.bucket, self.key, exc)

    def _send(self, part: bytearray) -> None:
        # botocore sends a bytearray as it sends bytes; its stubs name only bytes, and a copy costs a part.
        client = self.storage.client
        try:
            if self.upload_id is None:
                started = client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, ContentType=self.content_type
                )
                self.upload_id = started["UploadId"]
            number = len(self.parts) + 1
            sent = client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=cast(bytes, part)
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(exc) from exc
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def _failed(self, exc: Exception) -> RetryableError:
        return RetryableError(ErrorCode.STORAGE_UNAVAILABLE, f"cannot write s3://{self.bucket}/{self.key}: {exc}")


class PdfCache:
    """Source PDFs on local disk, keyed by bucket, key and etag.

    A worker takes one page task at a time, and a job's tasks usually land on
    the same few workers, so each PDF is fetched once per worker rather than
    once per task. The etag in the cache key means a replaced object is a new
    file: a source naming the new etag, or none, never gets the old one.
    Eviction is oldest-first by size.

    The directory's size is counted once at start and kept up to date in
    memory: looking at every cached file after every download cost the planner
    a sixth of its CPU with a few hundred files cached. When a download takes
    the total over ``max_bytes``, the oldest files go until it is under
    :data:`EVICT_TO` of it, so the next few downloads need no look at all. The
    count is this process's: a directory shared by processes is counted again
    at each eviction, and may run over its budget by what the others added.
    """

    EVICT_TO = 0.8
    """Eviction brings the directory down to this share of ``max_bytes``."""

    def __init__(self, storage: Storage, directory: Path, max_bytes: int, max_pdf_bytes: int) -> None:
        self.storage = storage
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_pdf_bytes = max_pdf_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._total = sum(p.stat().st_size for p in directory.glob("*.pdf"))

    def _path(self, bucket: str, key: str, etag: str) -> Path:
        digest = hashlib.sha256(f"{bucket}\0{key}\0{etag}".encode()).hexdigest()
        return self.directory / f"{digest}.pdf"

    def fetch(self, source: Source) -> Path:
        """The local path of ``source``, downloaded if not cached. Blocking."""
        return self.fetch_version(source)[0]

    def fetch_version(self, source: Source) -> tuple[Path, str]:
        """The local path of ``source`` and the etag of the version it holds, downloaded if not cached.

        A source that names its etag, cached under it, costs no request at all: the
        planner names the version it counted and hashed in its tasks, so a worker
        reads a job's later tasks from disk. Otherwise one GET: its size is checked
        before the body is read, and the file is named by the etag it came with.
        """
        self.storage.check_source(source)
        if source.etag:
            named = self._path(source.bucket, source.key, source.etag)
            if named.exists():
                os.utime(named)
                return named, source.etag
        info, body = self.storage.open(source.bucket, source.key)
        with closing(body):
            if info.size > self.max_pdf_bytes:
                raise PermanentError(
                    ErrorCode.FILE_TOO_LARGE, f"source is {info.size} bytes, over the limit of {self.max_pdf_bytes}"
                )
            if info.size == 0:
                raise PermanentError(ErrorCode.EMPTY_FILE, "source object is empty (0 bytes)")
            path = self._path(source.bucket, source.key, info.etag)
            if path.exists():
                os.utime(path)
                return path, info.etag
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".part")
            os.close(fd)
            try:
                self.storage.save(body, Path(tmp), source.bucket, source.key)
                os.replace(tmp, path)  # atomic: a reader never sees half a file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._total += path.stat().st_size
        if self._total > self.max_bytes:
            self._evict(keep=path)
        return path, info.etag

    def _evict(self, keep: Path) -> None:
        files = sorted(self.directory.glob("*.pdf"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.EVICT_TO * self.max_bytes:
                break
            if old != keep:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)
        self._total = total
