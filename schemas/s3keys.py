"""The S3 key layout and the checks every key and bucket passes."""

from __future__ import annotations

from schemas.errors import ErrorCode, PermanentError
from schemas.fields import refused_in_name

MAX_KEY_BYTES = 1024


def source_key(job_id: str) -> str:
    """Where ``pagewire submit`` stores a job's PDF."""
    return f"jobs/{job_id}/source.pdf"


def result_key(job_id: str, fmt: str) -> str:
    """Where the recorder writes the assembled result (``md`` or ``json``)."""
    return f"jobs/{job_id}/result.{fmt}"


def validate_key(key: str) -> str:
    """Reject keys that could escape the layout or break tools: ``..``, absolute, control characters, too long."""
    if not key:
        raise PermanentError(ErrorCode.INVALID_KEY, "empty key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise PermanentError(ErrorCode.INVALID_KEY, f"key longer than {MAX_KEY_BYTES} bytes")
    # The characters a message's Source.key refuses: a key this passes can always be sent in one.
    refused = refused_in_name(key)
    if refused is not None:
        raise PermanentError(ErrorCode.INVALID_KEY, f"key holds a control character (U+{ord(refused):04X})")
    if key.startswith("/") or "\\" in key:
        raise PermanentError(ErrorCode.INVALID_KEY, "key is absolute or holds a backslash")
    if any(part in ("..", ".") for part in key.split("/")):
        raise PermanentError(ErrorCode.INVALID_KEY, "key holds a '.' or '..' segment")
    return key


def validate_bucket(bucket: str, allowed: frozenset[str]) -> str:
    """Only buckets on the allowlist may be read."""
    if bucket not in allowed:
        raise PermanentError(ErrorCode.BUCKET_NOT_ALLOWED, f"bucket {bucket!r} is not on the allowlist")
    return bucket
