"""The rows the recorder writes for page events: JSON columns serialised once, as the JSONB type would."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import create_async_engine

from consumer.recorder.prepare import page_row
from consumer.recorder.sql import FILL_PAGE_CACHE, UPSERT_PAGES
from schemas.errors import ErrorCode
from schemas.messages import Block, Engine, NumberDisagreement, PageCompleted, PageFailed

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def completed(**extra: object) -> PageCompleted:
    return PageCompleted(
        job_id="j",
        page_no=3,
        text="Total 12,50 €",
        blocks=[
            Block(text="Total", bbox=(0.1, 0.2, 0.3, 0.25), confidence=0.5),
            Block(text='12,50 € "x"', bbox=(1 / 3, 0.2, 0.9, 0.25), confidence=1.0),
        ],
        confidence=0.75,
        engine=Engine.RAPIDOCR,
        duration_ms=1,
        worker="w",
        **extra,
    )


def test_blocks_are_the_json_of_each_block_as_model_dump_gives_it() -> None:
    event = completed()
    row = page_row(event, NOW)
    assert isinstance(row["blocks"], str)
    assert json.loads(row["blocks"]) == [b.model_dump(mode="json") for b in event.blocks]
    assert json.loads(row["number_disagreements"]) == []
    assert row["number_disagreement_count"] == 0


def test_number_disagreements_are_serialised_with_their_count() -> None:
    found = [NumberDisagreement(kind="currency", text_layer="12,50", ocr="12,60", text_layer_offset=6, ocr_offset=6)]
    row = page_row(completed(number_disagreements=found), NOW)
    assert json.loads(row["number_disagreements"]) == [d.model_dump(mode="json") for d in found]
    assert row["number_disagreement_count"] == 1


def test_a_failed_page_stores_a_json_null_for_its_blocks_as_before() -> None:
    event = PageFailed(
        job_id="j", page_no=1, error_code=ErrorCode.OCR_FAILED, message="m", attempt=2, final=True, worker="w"
    )
    row = page_row(event, NOW)
    # The plain JSONB type wrote None as a JSON null (not SQL NULL); the text keeps that.
    assert row["blocks"] == "null"
    assert json.loads(row["number_disagreements"]) == []
    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "ocr_failed", 2)


def test_the_statements_take_arrays_and_cast_json_text_to_the_columns_types() -> None:
    dialect = create_async_engine("postgresql+asyncpg://user@localhost/db").dialect  # connects to nothing
    upsert = str(UPSERT_PAGES.compile(dialect=dialect))
    # One statement a batch, whatever its size; boxes stay JSON text (migration 0005), the
    # disagreements are parsed into jsonb, which the README's queries look inside.
    assert "FROM unnest(" in upsert
    assert "CAST(batch.blocks AS JSON)" in upsert and "CAST(batch.number_disagreements AS JSONB)" in upsert
    sql = str(FILL_PAGE_CACHE.compile(dialect=dialect))
    # The page cache is filled through the pages' primary key, not a scan for event ids.
    assert "unnest(" in sql and "pages.job_id = fresh.job_id AND pages.page_no = fresh.page_no" in sql
