"""Every string a message carries refuses what PostgreSQL, S3 and a terminal cannot take, within a bound.

NUL in a cancel reason once failed the recorder's whole batch (PostgreSQL: ``invalid byte sequence for
encoding "UTF8": 0x00``) on every redelivery. These tests hold each string field of each message to its
type in ``schemas/fields.py``, in Python and in the checked-in JSON Schema alike.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.errors import ErrorCode, PermanentError
from schemas.fields import (
    KEY_MAX_CHARS,
    META_VALUE_MAX_CHARS,
    NAME_MAX_CHARS,
    PAGE_TEXT_MAX_CHARS,
    REPLACEMENT,
    TEXT_MAX_CHARS,
    Key,
    MetaValue,
    Name,
    PageText,
    Text,
    clean_name,
    clean_text,
)
from schemas.generate import JSON_DIR
from schemas.messages import (
    ALL_MESSAGE_TYPES,
    JobCancelled,
    JobOptions,
    JobRequest,
    OutputFormat,
    PageCompleted,
    PageFailed,
    Source,
    job_id_of,
    parse_job_request,
    parse_message,
    to_body,
)
from schemas.s3keys import validate_key

KEY = "<key>"
"""In a path: the (one) key of the dict there."""
VALUE = "<value>"
"""In a path: the value of the (one) entry of the dict there."""

SOURCE = {"bucket": "pagewire", "key": "inbox/a.pdf", "etag": "etag-1"}
BASES: dict[str, dict[str, Any]] = {
    "JobRequest": {
        "job_id": "job-1",
        "source": SOURCE,
        "idempotency_key": "key-1",
        "submitted_by": "someone",
        "metadata": {"team": "ocr"},
    },
    "PageTask": {
        "task_id": "task-1",
        "job_id": "job-1",
        "source": SOURCE,
        "first_page": 1,
        "last_page": 1,
        "options": {},
    },
    "JobQueued": {
        "event_id": "e-1",
        "job_id": "job-1",
        "source": SOURCE,
        "options": {},
        "submitted_by": "someone",
        "metadata": {"team": "ocr"},
    },
    "JobStarted": {
        "event_id": "e-1",
        "job_id": "job-1",
        "source": SOURCE,
        "options": {},
        "total_pages": 1,
        "first_page": 1,
        "last_page": 1,
        "tasks": 1,
        "idempotency_key": "key-1",
    },
    "PageCompleted": {
        "event_id": "e-1",
        "job_id": "job-1",
        "page_no": 1,
        "text": "Total 42",
        "blocks": [{"text": "Total 42", "bbox": [0.1, 0.1, 0.5, 0.2], "confidence": 0.9}],
        "confidence": 0.9,
        "engine": "rapidocr",
        "number_disagreements": [{"kind": "number", "text_layer": "42", "ocr": "47"}],
        "duration_ms": 1.0,
        "worker": "worker-1",
    },
    "PageFailed": {
        "event_id": "e-1",
        "job_id": "job-1",
        "page_no": 1,
        "error_code": "ocr_failed",
        "message": "the engine raised",
        "attempt": 1,
        "final": True,
        "worker": "worker-1",
    },
    "JobCompleted": {
        "event_id": "e-1",
        "job_id": "job-1",
        "pages_ok": 1,
        "pages_failed": 0,
        "result_keys": {"md": "jobs/job-1/result.md"},
        "bucket": "pagewire",
    },
    "JobFailed": {"event_id": "e-1", "job_id": "job-1", "error_code": "not_a_pdf", "message": "no %PDF- header"},
    "JobCancelled": {"event_id": "e-1", "job_id": "job-1", "reason": "changed my mind"},
}
for _name, _base in BASES.items():
    _base.update(type=_name, schema_version=1)

MODELS: dict[str, type[BaseModel]] = {m.__name__: m for m in ALL_MESSAGE_TYPES}

Path = tuple[str | int, ...]
SOURCE_FIELDS: list[tuple[Path, str, int]] = [
    (("source", "bucket"), "name", 63),
    (("source", "key"), "name", KEY_MAX_CHARS),
    (("source", "etag"), "name", NAME_MAX_CHARS),
]
METADATA_FIELDS: list[tuple[Path, str, int]] = [
    (("metadata", KEY), "name", NAME_MAX_CHARS),
    (("metadata", VALUE), "name", META_VALUE_MAX_CHARS),
]
EVENT_FIELDS: list[tuple[Path, str, int]] = [(("event_id",), "name", NAME_MAX_CHARS), (("job_id",), "job_id", 64)]

# Every string field of every message: its path, its kind (name: no control character at all; text: tab,
# LF and CR allowed; job_id: [A-Za-z0-9_.-], not dots only) and its longest value.
FIELDS: dict[str, list[tuple[Path, str, int]]] = {
    "JobRequest": [
        (("job_id",), "job_id", 64),
        *SOURCE_FIELDS,
        (("idempotency_key",), "name", NAME_MAX_CHARS),
        (("submitted_by",), "name", NAME_MAX_CHARS),
        *METADATA_FIELDS,
    ],
    "PageTask": [(("task_id",), "name", NAME_MAX_CHARS), (("job_id",), "job_id", 64), *SOURCE_FIELDS],
    "JobQueued": [*EVENT_FIELDS, *SOURCE_FIELDS, (("submitted_by",), "name", NAME_MAX_CHARS), *METADATA_FIELDS],
    "JobStarted": [*EVENT_FIELDS, *SOURCE_FIELDS, (("idempotency_key",), "name", NAME_MAX_CHARS)],
    "PageCompleted": [
        (("event_id",), "name", NAME_MAX_CHARS),
        (("job_id",), "job_id_or_empty", 64),
        (("text",), "text", PAGE_TEXT_MAX_CHARS),
        (("blocks", 0, "text"), "text", PAGE_TEXT_MAX_CHARS),
        (("number_disagreements", 0, "kind"), "name", NAME_MAX_CHARS),
        (("number_disagreements", 0, "text_layer"), "text", PAGE_TEXT_MAX_CHARS),
        (("number_disagreements", 0, "ocr"), "text", PAGE_TEXT_MAX_CHARS),
        (("worker",), "name", NAME_MAX_CHARS),
    ],
    "PageFailed": [*EVENT_FIELDS, (("message",), "text", TEXT_MAX_CHARS), (("worker",), "name", NAME_MAX_CHARS)],
    "JobCompleted": [
        *EVENT_FIELDS,
        (("result_keys", KEY), "name", NAME_MAX_CHARS),
        (("result_keys", VALUE), "name", KEY_MAX_CHARS),
        (("bucket",), "name", NAME_MAX_CHARS),
    ],
    "JobFailed": [*EVENT_FIELDS, (("message",), "text", TEXT_MAX_CHARS)],
    "JobCancelled": [*EVENT_FIELDS, (("reason",), "text", TEXT_MAX_CHARS)],
}
CASES = [(name, path, kind, longest) for name, fields in FIELDS.items() for path, kind, longest in fields]
CASE_IDS = [f"{name}.{'.'.join(map(str, path))}" for name, path, _, _ in CASES]

REFUSED_EVERYWHERE = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]
TAB_LF_CR = ["\t", "\n", "\r"]


def with_value(body: dict[str, Any], path: Path, value: str) -> dict[str, Any]:
    """A copy of ``body`` with the string at ``path`` replaced."""
    out = copy.deepcopy(body)
    node: Any = out
    for step in path[:-2]:
        node = node[step]
    parent_step, last = path[-2] if len(path) > 1 else None, path[-1]
    if last == KEY:
        (old_value,) = node[parent_step].values()
        node[parent_step] = {value: old_value}
    elif last == VALUE:
        holder = node[parent_step]
        ((old_key, _),) = holder.items()
        holder[old_key] = value
    else:
        if parent_step is not None:
            node = node[parent_step]
        node[last] = value
    return out


def accepted(name: str, body: dict[str, Any]) -> bool:
    try:
        MODELS[name].model_validate(body)
    except ValidationError:
        return False
    return True


def assert_refused(name: str, body: dict[str, Any]) -> None:
    """Refused when built in Python, and malformed_message when it comes off the broker."""
    with pytest.raises(ValidationError):
        MODELS[name].model_validate(body)
    with pytest.raises(PermanentError) as caught:
        parse_message(json.dumps(body).encode())
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE


def assert_accepted(name: str, body: dict[str, Any]) -> None:
    message = MODELS[name].model_validate(body)
    assert parse_message(to_body(message)) == message


def good_value(kind: str, longest: int) -> str:
    return {"job_id": "job.1_a-B", "job_id_or_empty": "job.1_a-B"}.get(kind, "Zoë’s scan – ünïcode 😀\xa0ok")[:longest]


# --- each field refuses control characters, and is bounded --------------------------------------------


def test_every_string_field_of_every_message_is_listed_here() -> None:
    """A new string field must be added to FIELDS, so the tests below hold it too."""
    for model in ALL_MESSAGE_TYPES:
        schema = json.loads((JSON_DIR / f"{model.__name__}.json").read_text())
        found = {path for path, _ in string_nodes(schema, schema, ())}
        assert found == {path for path, _, _ in FIELDS[model.__name__]}, model.__name__


@pytest.mark.parametrize(("name", "path", "kind", "longest"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("char", REFUSED_EVERYWHERE, ids=[f"U+{ord(c):04X}" for c in REFUSED_EVERYWHERE])
def test_control_characters_are_refused(name: str, path: Path, kind: str, longest: int, char: str) -> None:
    assert_refused(name, with_value(BASES[name], path, f"abc{char}def"))


@pytest.mark.parametrize(("name", "path", "kind", "longest"), CASES, ids=CASE_IDS)
def test_tab_lf_cr_only_where_the_field_is_free_text(name: str, path: Path, kind: str, longest: int) -> None:
    for char in TAB_LF_CR:
        body = with_value(BASES[name], path, f"line one{char}line two")
        if kind == "text":
            assert_accepted(name, body)
        else:
            assert_refused(name, body)
    # A name that ends with a line feed: Python's re (jsonschema) lets "$" match before it.
    if kind != "text":
        assert_refused(name, with_value(BASES[name], path, "name\n"))


@pytest.mark.parametrize(("name", "path", "kind", "longest"), CASES, ids=CASE_IDS)
def test_the_longest_value_passes_and_one_more_is_refused(name: str, path: Path, kind: str, longest: int) -> None:
    assert_accepted(name, with_value(BASES[name], path, "x" * longest))
    assert_refused(name, with_value(BASES[name], path, "x" * (longest + 1)))


@pytest.mark.parametrize(("name", "path", "kind", "longest"), CASES, ids=CASE_IDS)
def test_lone_surrogates_are_refused(name: str, path: Path, kind: str, longest: int) -> None:
    # They cannot be encoded as UTF-8: in Python they are refused, and as a JSON escape the body is not JSON.
    with pytest.raises(ValidationError):
        MODELS[name].model_validate(with_value(BASES[name], path, "abc\ud800"))
    escaped = json.dumps(with_value(BASES[name], path, "abc\udc00def")).encode()
    assert b"\\udc00" in escaped
    with pytest.raises(PermanentError) as caught:
        parse_message(escaped)
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE
    # A pair is one character, and welcome.
    assert_accepted(name, with_value(BASES[name], path, good_value(kind, longest)))


JOB_ID_CASES = [(name, path) for name, path, kind, _ in CASES if kind.startswith("job_id")]


@pytest.mark.parametrize(("name", "path"), JOB_ID_CASES, ids=[name for name, _ in JOB_ID_CASES])
def test_job_ids_made_of_dots_are_refused(name: str, path: Path) -> None:
    for dots in (".", "..", "...", "." * 64):
        assert_refused(name, with_value(BASES[name], path, dots))
    for refused in ("../etc", "a/b", "a b", "é"):
        assert_refused(name, with_value(BASES[name], path, refused))
    for fine in ("a.b", ".a", "a..", "-", "_", "job-1.2_x"):
        assert_accepted(name, with_value(BASES[name], path, fine))


def test_an_empty_job_id_is_refused_but_in_a_request() -> None:
    for name in FIELDS:
        if name != "JobRequest":
            assert_refused(name, with_value(BASES[name], ("job_id",), ""))
    # A request without an id (or with an empty one) gets one, derived from its idempotency key here.
    request = JobRequest.model_validate(with_value(BASES["JobRequest"], ("job_id",), ""))
    assert request.job_id == JobRequest.model_validate({**BASES["JobRequest"], "job_id": None}).job_id != ""


def test_the_reported_cancel_is_refused_before_anything_is_published() -> None:
    with pytest.raises(ValidationError, match="reason"):
        JobCancelled(job_id="job-1", reason="stop\x00now")
    with pytest.raises(ValidationError, match="submitted_by"):
        JobRequest(source=Source(bucket="pagewire", key="a.pdf"), submitted_by="me\x00")
    with pytest.raises(ValidationError, match="metadata"):
        JobRequest(source=Source(bucket="pagewire", key="a.pdf"), metadata={"filename": "a\x00.pdf"})
    with pytest.raises(ValidationError, match="job_id"):
        JobCancelled(job_id="..")


def test_a_job_request_off_the_queue_with_a_nul_is_malformed() -> None:
    body = with_value(BASES["JobRequest"], ("submitted_by",), "me\x00")
    with pytest.raises(PermanentError) as caught:
        parse_job_request(json.dumps(body).encode(), message_id="m-1")
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE
    assert "\x00" not in caught.value.message


# --- output_formats is a set of at most the two formats ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (["md", "md"], [OutputFormat.MD]),
        (["json", "md"], [OutputFormat.MD, OutputFormat.JSON]),
        (["json", "json"], [OutputFormat.JSON]),
        ([], []),
    ],
)
def test_output_formats_drop_repeats_in_the_enums_order(given: list[str], kept: list[OutputFormat]) -> None:
    options = JobOptions.model_validate({"output_formats": given})
    assert options.output_formats == kept
    assert json.loads(options.model_dump_json())["output_formats"] == [f.value for f in kept]


@pytest.mark.parametrize("given", [["md", "json", "md"], ["md"] * 1_000_000, ["pdf"]])
def test_too_many_or_unknown_formats_are_refused(given: list[str]) -> None:
    with pytest.raises(ValidationError, match="output_formats"):
        JobOptions.model_validate({"output_formats": given})
    body = with_value(BASES["JobRequest"], ("submitted_by",), "someone")
    body["options"] = {"output_formats": given}
    with pytest.raises(PermanentError) as caught:
        parse_message(json.dumps(body).encode())
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE


def test_the_schema_says_output_formats_are_unique_and_two_at_most() -> None:
    schema = json.loads((JSON_DIR / "JobRequest.json").read_text())
    formats = schema["$defs"]["JobOptions"]["properties"]["output_formats"]
    assert formats["uniqueItems"] is True and formats["maxItems"] == 2
    # Producers that validate against the schema are stricter than pagewire (a repeat is refused there).
    body = {**BASES["JobRequest"], "options": {"output_formats": ["md", "md"]}}
    assert not jsonschema.Draft202012Validator(schema).is_valid(body)
    assert accepted("JobRequest", body)


# --- the JSON Schema agrees with pydantic ----------------------------------------------------------------

HOSTILE = [
    "",
    "ok",
    "a\x00b",
    "\x00",
    "\t",
    "tab\there",
    "two\nlines",
    "name\n",
    "\nname",
    "crlf\r\n",
    "\r",
    "\x1b[31mred\x1b[0m",
    "del\x7f",
    "\x80",
    "nel\x85",
    "\x9f",
    "\xa0nbsp",
    "é",
    "😀",
    "line\u2028separator",
    "\ufeffbom",
    "\ufffd",
    ".",
    "..",
    "...",
    "a..b",
    "../x",
    "a/b",
    " ",
    "job-1",
]


def test_every_string_in_the_schema_is_bounded_and_names_what_it_refuses() -> None:
    for path in sorted(JSON_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        for where, node in string_nodes(schema, schema, ()):
            assert "maxLength" in node, f"{path.name} {where}"
            assert "not" in node and "pattern" in node["not"], f"{path.name} {where}"


@pytest.mark.parametrize(("name", "path", "kind", "longest"), CASES, ids=CASE_IDS)
def test_json_schema_and_pydantic_agree_on_hostile_strings(name: str, path: Path, kind: str, longest: int) -> None:
    validator = jsonschema.Draft202012Validator(json.loads((JSON_DIR / f"{name}.json").read_text()))
    for value in [*HOSTILE, "x" * longest, "x" * (longest + 1)]:
        if (name, path, value) == ("JobRequest", ("job_id",), ""):
            continue  # an empty id means none: pydantic derives one (test_an_empty_job_id_only_in_a_page_completed)
        body = with_value(BASES[name], path, value)
        assert validator.is_valid(body) == accepted(name, body), repr(value)


# --- cleaning text pagewire reads off a PDF --------------------------------------------------------------


def test_clean_text_replaces_one_for_one() -> None:
    assert clean_text("a\x00b\x7fc\x04d\ud800e") == "a\ufffdb\ufffdc\ufffdd\ufffde"
    assert clean_text("tab\tlf\ncr\r") == "tab\tlf\ncr\r"
    # The controls that are whitespace read as the space they stand for.
    assert clean_text("vt\x0bff\x0cfs\x1cus\x1fnel\x85.") == "vt ff fs us nel ."
    assert clean_name("fs\x1c") == f"fs{REPLACEMENT}"
    assert clean_name("tab\tlf\n") == f"tab{REPLACEMENT}lf{REPLACEMENT}"
    text = "x" * 10
    assert clean_text(text) is text


def test_clean_text_cuts_to_the_limit_and_says_so() -> None:
    assert clean_text("abcdef", max_length=4) == "abc…"
    assert clean_text("abcd", max_length=4) == "abcd"
    assert clean_name("n" * 1000) == "n" * (NAME_MAX_CHARS - 1) + "…"


def test_an_error_message_always_fits_a_failure_event() -> None:
    error = PermanentError(ErrorCode.TRUNCATED_PDF, "pdfium said \x00\x01 " + "y" * 10_000)
    assert "\x00" not in error.message and len(error.message) == TEXT_MAX_CHARS
    PageFailed(job_id="j", page_no=1, error_code=error.code, message=error.message, attempt=1, final=True, worker="w")


ANY_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=()),  # surrogates too
        st.sampled_from([*REFUSED_EVERYWHERE, *TAB_LF_CR, "\ud800", "\udfff", "\xa0", "\u2028"]),
    )
)
TEXT_TYPES: list[tuple[object, int]] = [(Text, TEXT_MAX_CHARS), (PageText, PAGE_TEXT_MAX_CHARS)]
NAME_TYPES: list[tuple[object, int]] = [(Name, NAME_MAX_CHARS), (MetaValue, META_VALUE_MAX_CHARS)]


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_any_text_cleaned_is_taken_by_every_text_and_name_field(text: str) -> None:
    for kind, longest in TEXT_TYPES:
        cleaned = clean_text(text, max_length=longest)
        assert TypeAdapter(kind).validate_python(cleaned) == cleaned
    for kind, longest in NAME_TYPES:
        cleaned = clean_name(text, max_length=longest)
        assert TypeAdapter(kind).validate_python(cleaned) == cleaned
    if text:
        cleaned = clean_name(text, max_length=KEY_MAX_CHARS)
        assert TypeAdapter(Key).validate_python(cleaned) == cleaned
    # One for one, so offsets into a page's text (number_disagreements) still point where they did.
    assert len(clean_text(text)) == len(text)
    assert clean_text(clean_text(text)) == clean_text(text)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_what_a_field_takes_round_trips_and_holds_no_nul(text: str) -> None:
    if _takes(Text, text):
        assert "\x00" not in text
        event = JobCancelled(job_id="job-1", reason=text)
        assert parse_message(to_body(event)) == event
    if _takes(Name, text):
        assert "\x00" not in text and "\n" not in text
        request = JobRequest(source=Source(bucket="pagewire", key="a.pdf"), submitted_by=text, metadata={text: text})
        assert parse_message(to_body(request)) == request
    if _takes(PageText, text):
        page = PageCompleted(job_id="j", page_no=1, text=text, confidence=1, engine="text", duration_ms=0, worker="w")
        assert parse_message(to_body(page)) == page


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_a_key_that_validate_key_passes_fits_a_source(key: str) -> None:
    try:
        validate_key(key)
    except PermanentError as exc:
        assert exc.code == ErrorCode.INVALID_KEY
        return
    assert Source(bucket="pagewire", key=key).key == key


# --- the S3 layout and the best-effort job id -----------------------------------------------------------


@pytest.mark.parametrize("key", ["a\x7fb.pdf", "a\x85b.pdf", "a\x9fb.pdf", "a\ud800b.pdf", "a\tb.pdf", "..", "a/../b"])
def test_validate_key_refuses_what_source_key_refuses(key: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_key(key)
    assert caught.value.code == ErrorCode.INVALID_KEY


@pytest.mark.parametrize("job_id", ["..", ".", "é", "a\x00", "a/b", "x" * 65, ""])
def test_job_id_of_a_broken_body_is_only_an_id_a_failure_event_takes(job_id: str) -> None:
    assert job_id_of(json.dumps({"job_id": job_id, "oops": 1}).encode()) is None


def test_job_id_of_a_broken_body_keeps_a_good_id() -> None:
    assert job_id_of(b'{"job_id": "a..b-1", "oops": 1}') == "a..b-1"


# --- walking the checked-in schema -------------------------------------------------------------------------


def string_nodes(node: dict[str, Any], root: dict[str, Any], path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The free strings of a schema with their paths: not enums, constants or dates."""
    if "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    for choice in node.get("anyOf", []) + node.get("oneOf", []):
        yield from string_nodes(choice, root, path)
    kind = node.get("type")
    if kind == "object":
        for name, sub in node.get("properties", {}).items():
            yield from string_nodes(sub, root, (*path, name))
        if "propertyNames" in node:
            yield (*path, KEY), node["propertyNames"]
        for sub in node.get("patternProperties", {}).values():
            yield from string_nodes(sub, root, (*path, VALUE))
        if isinstance(node.get("additionalProperties"), dict):
            yield from string_nodes(node["additionalProperties"], root, (*path, VALUE))
    elif kind == "array":
        if isinstance(node.get("items"), dict):
            yield from string_nodes(node["items"], root, (*path, 0))
    # source.sha256 is 64 hex digits by its own pattern.
    elif kind == "string" and not {"enum", "const", "format"} & node.keys() and path != ("source", "sha256"):
        yield path, node


def _takes(kind: object, text: str) -> bool:
    try:
        TypeAdapter(kind).validate_python(text)
    except ValidationError:
        return False
    return True
