"""Page plans: which pages go together in one task."""

from __future__ import annotations

import pytest

from consumer.planner import cut, missing_runs, runs, task_size
from schemas.messages import Engine


def test_cut_packs_pages_to_the_size() -> None:
    assert cut(1, 70, 32) == [(1, 32), (33, 64), (65, 70)]
    assert cut(2, 4, 1) == [(2, 2), (3, 3), (4, 4)]
    assert cut(5, 5, 32) == [(5, 5)]


@pytest.mark.parametrize(
    ("engine", "size"),
    [(Engine.TEXT, 32), (Engine.AUTO, 32), (Engine.RAPIDOCR, 1), (Engine.NEMOTRON, 1)],
)
def test_text_and_auto_tasks_are_sized_for_text_pages_ocr_ones_for_ocr(engine: Engine, size: int) -> None:
    # auto: the worker hands pages that need OCR on as tasks of their own
    assert task_size(engine, text_per_task=32, ocr_per_task=1) == size


def test_cut_covers_every_page_once() -> None:
    plan = cut(5, 95, 8)
    pages = [p for a, b in plan for p in range(a, b + 1)]
    assert pages == list(range(5, 96))
    assert all(b - a < 8 for a, b in plan)


def test_runs_of_consecutive_pages() -> None:
    assert runs([2, 4, 5, 6, 9]) == [(2, 2), (4, 6), (9, 9)]
    assert runs([]) == []


def test_missing_runs_skip_pages_from_the_cache() -> None:
    assert missing_runs(1, 10, {1, 4, 5, 10}) == [(2, 3), (6, 9)]
    assert missing_runs(1, 3, {1, 2, 3}) == []
