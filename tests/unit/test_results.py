"""Assembling results and merging a batch of page events (pure logic of the recorder)."""

from __future__ import annotations

import json
from typing import Any

from consumer.recorder import merge_page_events
from consumer.results import PageRow, assemble_json, assemble_markdown, lines_of
from schemas.errors import ErrorCode
from schemas.messages import Engine, PageCompleted, PageFailed


def completed(page: int, text: str = "t") -> PageCompleted:
    return PageCompleted(
        job_id="j", page_no=page, text=text, confidence=1, engine=Engine.TEXT, duration_ms=1, worker="w"
    )


def failed(page: int, *, final: bool) -> PageFailed:
    return PageFailed(
        job_id="j", page_no=page, error_code=ErrorCode.OCR_FAILED, message="m", attempt=1, final=final, worker="w"
    )


def test_completion_outranks_failure_whatever_the_order() -> None:
    orders: list[list[PageCompleted | PageFailed]] = [
        [failed(1, final=False), completed(1)],
        [completed(1), failed(1, final=True)],
    ]
    for events in orders:
        (kept,) = merge_page_events(events)
        assert isinstance(kept, PageCompleted)


def test_first_of_equals_is_kept() -> None:
    a, b = completed(1, "first"), completed(1, "second")
    assert merge_page_events([a, b]) == [a]


def test_final_failure_outranks_a_retry() -> None:
    (kept,) = merge_page_events([failed(2, final=False), failed(2, final=True), failed(2, final=False)])
    assert isinstance(kept, PageFailed) and kept.final


def rows() -> list[PageRow]:
    return [
        PageRow(2, "failed", None, None, None, None, "render_failed", "bad page"),
        PageRow(1, "completed", "text", "Hello\n", [{"text": "Hello"}], 1.0, None, None),
    ]


def test_markdown_keeps_page_order_and_names_failures() -> None:
    md = assemble_markdown(rows())
    assert md.index("page 1") < md.index("Hello") < md.index("page 2 failed: render_failed: bad page")


def test_json_groups_boxes_into_lines_in_reading_order() -> None:
    boxes = [
        {"text": "right", "bbox": [0.55, 0.1, 0.9, 0.12], "confidence": 0.8},
        {"text": "Left", "bbox": [0.1, 0.1, 0.3, 0.12], "confidence": 1.0},
        {"text": "below", "bbox": [0.1, 0.2, 0.3, 0.22], "confidence": 0.9},
    ]
    doc = json.loads(
        assemble_json(
            {"job_id": "j", "status": "completed"}, [PageRow(1, "completed", "rapidocr", "", boxes, 0.9, None, None)]
        )
    )
    lines = doc["pages"][0]["lines"]
    assert [line["text"] for line in lines][-1] == "below"
    assert all(0 <= line["bbox"][0] <= line["bbox"][2] <= 1 for line in lines)
    assert sum(len(line["text"].split()) for line in lines) == 3


def test_json_holds_every_page_with_blocks() -> None:
    doc = json.loads(assemble_json({"job_id": "j", "status": "completed_with_errors"}, rows()))
    assert [p["page_no"] for p in doc["pages"]] == [1, 2]
    assert doc["pages"][0]["blocks"] == [{"text": "Hello"}]
    assert doc["pages"][1]["error_code"] == "render_failed"


def test_json_is_written_as_json_dumps_with_indent_one_wrote_it() -> None:
    boxes = [{"text": "Grüße", "bbox": [0.1, 1 / 3, 0.3, 0.4], "confidence": 0.5}]
    pages = [*rows(), PageRow(3, "completed", "rapidocr", "Grüße\n", boxes, 0.5, None, None)]
    out = assemble_json({"job_id": "j", "status": "completed_with_errors", "total_pages": 3}, pages)
    assert out == json.dumps(json.loads(out), ensure_ascii=False, indent=1)
    assert "Grüße" in out


def test_json_keeps_its_keys() -> None:
    doc = json.loads(assemble_json({"job_id": "j", "status": "completed"}, rows()))
    assert list(doc) == ["job_id", "status", "total_pages", "pages_ok", "pages_failed", "source", "pages"]
    assert list(doc["pages"][0]) == [
        "page_no",
        "status",
        "engine",
        "confidence",
        "text",
        "blocks",
        "lines",
        "error_code",
        "error_message",
    ]


def test_a_line_of_several_boxes_has_their_joint_box_and_mean_confidence() -> None:
    boxes: list[dict[str, Any]] = [
        {"text": "world", "bbox": [0.4, 0.1, 0.6, 0.13], "confidence": 0.5},
        {"text": "Hello", "bbox": [0.1, 0.11, 0.3, 0.12], "confidence": 1.0},
        {"text": "no box"},
    ]
    assert lines_of(boxes) == [{"text": "Hello world", "bbox": [0.1, 0.1, 0.6, 0.13], "confidence": 0.75}]
    assert lines_of([boxes[0]]) == [{"text": "world", "bbox": [0.4, 0.1, 0.6, 0.13], "confidence": 0.5}]
    assert lines_of(None) == lines_of([]) == []


def test_json_written_a_page_at_a_time_is_the_whole_document_encoded_at_once() -> None:
    import pydantic_core

    from consumer.results import JsonResult, json_page

    job = {"job_id": "j", "status": "completed", "total_pages": 3, "source_bucket": "b", "source_key": "k"}
    pages = [
        PageRow(
            1,
            "completed",
            "rapidocr",
            "héllo\nwörld",
            [{"text": "a", "bbox": [1, 2, 3, 4], "confidence": 0.5}],
            0.9,
            None,
            None,
        ),
        PageRow(2, "failed", None, None, None, None, "render_failed", 'line\nbreak "quoted"'),
        PageRow(3, "completed", "text", "", [], 1.0, None, None),
    ]
    for count in range(4):
        result = JsonResult()
        streamed = result.head(job) + "".join(result.page(p) for p in pages[:count]) + result.tail()
        whole = {
            "job_id": "j",
            "status": "completed",
            "total_pages": 3,
            "pages_ok": None,
            "pages_failed": None,
            "source": {"bucket": "b", "key": "k"},
            "pages": [json.loads(json_page(p)) for p in pages[:count]],
        }
        assert streamed == pydantic_core.to_json(whole, indent=1).decode()
        assert [p["page_no"] for p in json.loads(streamed)["pages"]] == [1, 2, 3][:count]
