"""The string types of every message field, and the helpers that make text fit them.

Every string a message carries ends up in PostgreSQL (``text`` and ``jsonb``
columns), in S3 keys, in AMQP headers or in a browser. PostgreSQL refuses NUL
outright (``invalid byte sequence for encoding "UTF8": 0x00``), and it fails
the recorder's whole batch; a lone surrogate cannot be encoded as UTF-8 at all;
the other control characters break logs, terminals and the status page. So
each field takes one of the types below, which refuse them and bound the
length:

- :data:`Name`, :data:`Key`, :data:`Bucket`, :data:`MetaValue`: identifiers and
  short labels (worker, submitted_by, idempotency_key, metadata, S3 names):
  no control character at all.
- :data:`Text` (error messages, reasons) and :data:`PageText` (what a page
  reads): free text, so tab, line feed and carriage return are allowed.
- :data:`JobId`: ``[A-Za-z0-9_.-]``, not made of dots only (``.``/``..`` would
  name a directory in ``jobs/{job_id}/``).

The limits are ``Field(pattern=...)``: pydantic checks them in Rust (no Python
call per field, which matters for a page event of a hundred blocks) and the
same pattern goes into the JSON Schema in ``schemas/json/``, so producers in
other languages refuse what pagewire refuses. Lone surrogates cannot be
written in a pattern that every engine reads alike; pydantic refuses them in a
Python string, and pydantic's JSON parser refuses a ``\\udXXX`` escape that is
not half of a pair (the body is then ``malformed_message``).

Text that pagewire itself reads off a PDF (a text layer, OCR) may hold any of
these characters, and a page must not fail for it: the worker passes such text
through :func:`clean_text` before it builds blocks and events.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, JsonValue

NAME_MAX_CHARS = 256
"""Identifiers and labels: worker names, ``submitted_by``, idempotency keys, metadata keys."""
TEXT_MAX_CHARS = 4096
"""Error messages and reasons: a sentence or a short traceback line, not a document."""
PAGE_TEXT_MAX_CHARS = 1_000_000
"""A page's text or a block's: ten times a text layer's limit (``consumer/pdf.MAX_PAGE_CHARS``), so a page
read from both its text layer and OCR fits, while one event stays well under the message limit (16 MiB)."""
KEY_MAX_CHARS = 1024
"""S3 allows 1,024 bytes of UTF-8; the schema can count characters only (``s3keys.validate_key`` counts bytes)."""
META_VALUE_MAX_CHARS = 1024
"""A metadata value holds an S3 key at most (the drop folder's ``dropfolder_key``)."""
JOB_ID_MAX_CHARS = 64

# Written with \xHH escapes, which ECMA-262 (JSON Schema), Rust's regex (pydantic), Python's re, Go's RE2 and
# Java all read as the same code points: C0 controls, DEL and the C1 controls (0x80-0x9F).
_CONTROLS = r"\x00-\x1f\x7f-\x9f"
_CONTROLS_BUT_TAB_LF_CR = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_JOB_ID_CHARS = r"A-Za-z0-9_.-"

NAME_PATTERN = rf"^[^{_CONTROLS}]*$"
"""No control character at all."""
TEXT_PATTERN = rf"^[^{_CONTROLS_BUT_TAB_LF_CR}]*$"
"""No control character but tab, line feed and carriage return."""
JOB_ID_PATTERN = rf"^[{_JOB_ID_CHARS}]*[A-Za-z0-9_-][{_JOB_ID_CHARS}]*$"
"""Letters, digits, ``_.-``, and at least one that is not a dot (no lookahead: Rust's regex has none)."""


def _refuses(chars: str) -> dict[str, JsonValue]:
    # Python's re, which the jsonschema package uses, lets "$" match before a final line feed, so the
    # anchored pattern alone passes "name\n" there (ECMA-262 and Rust do not). An unanchored search for
    # one refused character reads alike in every engine; the schema says both.
    return {"not": {"pattern": f"[{chars}]"}}


Name = Annotated[str, Field(max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN, json_schema_extra=_refuses(_CONTROLS))]
Text = Annotated[
    str,
    Field(max_length=TEXT_MAX_CHARS, pattern=TEXT_PATTERN, json_schema_extra=_refuses(_CONTROLS_BUT_TAB_LF_CR)),
]
PageText = Annotated[
    str,
    Field(max_length=PAGE_TEXT_MAX_CHARS, pattern=TEXT_PATTERN, json_schema_extra=_refuses(_CONTROLS_BUT_TAB_LF_CR)),
]
Key = Annotated[
    str, Field(min_length=1, max_length=KEY_MAX_CHARS, pattern=NAME_PATTERN, json_schema_extra=_refuses(_CONTROLS))
]
Bucket = Annotated[str, Field(min_length=3, max_length=63, pattern=NAME_PATTERN, json_schema_extra=_refuses(_CONTROLS))]
MetaValue = Annotated[
    str, Field(max_length=META_VALUE_MAX_CHARS, pattern=NAME_PATTERN, json_schema_extra=_refuses(_CONTROLS))
]
JobId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=JOB_ID_MAX_CHARS,
        pattern=JOB_ID_PATTERN,
        json_schema_extra=_refuses(f"^{_JOB_ID_CHARS}"),
    ),
]


def _with_offset(value: datetime) -> datetime:
    # pydantic takes "2030-01-01T00:00:00" as a naive datetime, which RFC 3339 (the schema's
    # "date-time") does not allow, and which no aware one can be compared with: the recorder
    # sorting a batch's events by time died on one, and the batch came back to it for ever.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a date-time needs a UTC offset (Z or +HH:MM)")
    return value


Instant = Annotated[datetime, AfterValidator(_with_offset)]
"""A point in time, with its UTC offset (the messages' ``occurred_at``, ``submitted_at``, ``deadline``)."""

REPLACEMENT = "\ufffd"
"""What :func:`clean_text` puts in place of a refused character: one for one, so offsets into the text hold."""
_NOT_TEXT = re.compile(rf"[{_CONTROLS_BUT_TAB_LF_CR}\ud800-\udfff]")
_NOT_NAME = re.compile(rf"[{_CONTROLS}\ud800-\udfff]")
_CUT = "…"


# The controls that are whitespace (vertical tab, form feed, the information separators, next
# line): a text layer uses them between words, so in text they read as the space they stand for.
_WHITESPACE_CONTROLS = str.maketrans(dict.fromkeys("\x0b\x0c\x1c\x1d\x1e\x1f\x85", " "))


def _clean(pattern: re.Pattern[str], text: str, max_length: int | None, spaces: bool = False) -> str:
    if pattern.search(text) is not None:
        if spaces:
            text = text.translate(_WHITESPACE_CONTROLS)
        text = pattern.sub(REPLACEMENT, text)
    if max_length is not None and len(text) > max_length:
        # A mark that something was cut, within the limit.
        text = text[: max(0, max_length - len(_CUT))] + _CUT[:max_length]
    return text


def refused_in_name(text: str) -> str | None:
    """The first character of ``text`` that a :data:`Name` field refuses, or None."""
    found = _NOT_NAME.search(text)
    return found.group() if found is not None else None


_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a job id the messages take (:data:`JobId`): a failure can be recorded for it."""
    return isinstance(value, str) and len(value) <= JOB_ID_MAX_CHARS and _JOB_ID_RE.fullmatch(value) is not None


def clean_text(text: str, max_length: int | None = None) -> str:
    """``text`` as :data:`Text` and :data:`PageText` fields take it.

    Each character they refuse (C0 controls but tab, LF and CR; DEL; C1
    controls; lone surrogates) becomes U+FFFD, or a space where it is
    whitespace (vertical tab, form feed, the separators U+001C to U+001F,
    U+0085), one for one, so the length and every offset into the text stay
    as they were. With ``max_length`` a longer text is cut, ending in ``…``.
    For text pagewire did not write itself and must not refuse: a PDF's text
    layer, OCR output, an exception's message.
    """
    return _clean(_NOT_TEXT, text, max_length, spaces=True)


def clean_name(text: str, max_length: int | None = NAME_MAX_CHARS) -> str:
    """``text`` as :data:`Name` fields take it: as :func:`clean_text`, and tab, LF and CR become U+FFFD too.

    For a label taken from outside that should not refuse the request it comes
    with: an uploaded file's name, an S3 key listed in a drop folder.
    """
    return _clean(_NOT_NAME, text, max_length)
