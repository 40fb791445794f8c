"""Error codes and the one exception tree of pagewire.

Every failure a user can see carries a stable :class:`ErrorCode`. The class of
the exception alone decides what a consumer does with the message it holds::

    PagewireError            (code, message)
    ├── PermanentError       bad input: record the failure, ack, never retry
    └── RetryableError       a passing fault: hand the message back, retry
                             with backoff, dead-letter after the delivery limit

The codes are a contract: they appear in the ``jobs``/``pages`` tables, in
``JobFailed``/``PageFailed`` events and in the README. Add codes, never rename.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.fields import TEXT_MAX_CHARS, clean_text


class ErrorCode(StrEnum):
    """Stable error codes, stored in tables and sent in events."""

    # Input (permanent)
    NOT_A_PDF = "not_a_pdf"
    EMPTY_FILE = "empty_file"
    TRUNCATED_PDF = "truncated_pdf"
    ENCRYPTED_PDF = "encrypted_pdf"
    NO_PAGES = "no_pages"
    TOO_MANY_PAGES = "too_many_pages"
    FILE_TOO_LARGE = "file_too_large"
    PAGE_TOO_LARGE = "page_too_large"
    SOURCE_MISSING = "source_missing"
    INVALID_KEY = "invalid_key"
    BUCKET_NOT_ALLOWED = "bucket_not_allowed"
    INVALID_OPTIONS = "invalid_options"
    BAD_IMAGE = "bad_image"
    IMAGE_TOO_LARGE = "image_too_large"
    # Messages (permanent)
    MALFORMED_MESSAGE = "malformed_message"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MESSAGE_TOO_LARGE = "message_too_large"
    # Processing
    RENDER_FAILED = "render_failed"
    PDF_TOO_COMPLEX = "pdf_too_complex"
    PROCESS_CRASHED = "process_crashed"
    OCR_FAILED = "ocr_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    RETRIES_EXHAUSTED = "retries_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL_ERROR = "internal_error"
    # Recording (the recorder ends a job that cannot otherwise end)
    EVENT_UNRECORDABLE = "event_unrecordable"
    STALLED = "stalled"
    # Queries (client side)
    JOB_NOT_FOUND = "job_not_found"
    RESULT_NOT_READY = "result_not_ready"


class PagewireError(Exception):
    """Base of every pagewire failure; carries a stable error code."""

    retryable: bool = False

    def __init__(self, code: ErrorCode, message: str) -> None:
        # The message goes into PageFailed/JobFailed, the tables and a header, and is often made of an
        # exception's text or a name from outside: made to fit a Text field here, once for every
        # caller, so reporting a failure cannot fail on it.
        message = clean_text(message, TEXT_MAX_CHARS)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[PagewireError], tuple[ErrorCode, str]]:
        # Errors cross from the sandbox's child process by pickle.
        return (type(self), (self.code, self.message))


class PermanentError(PagewireError):
    """Bad input or a bad request: retrying cannot help."""

    retryable = False


class RetryableError(PagewireError):
    """A passing fault (storage down, engine hiccup): try the message again."""

    retryable = True


class ConfigurationError(Exception):
    """A process cannot start as configured; the message names the setting to change.

    Not a :class:`PagewireError`: no job or message is at fault, and no error code is stored.
    """
