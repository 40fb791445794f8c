"""Page plans: which pages go together in one task."""

from __future__ import annotations

from consumer.planner import plan_tasks
from schemas.messages import Engine


def test_text_engine_packs_pages() -> None:
    assert plan_tasks(1, 70, [True] * 70, Engine.TEXT, text_per_task=32, ocr_per_task=1) == [
        (1, 32),
        (33, 64),
        (65, 70),
    ]


def test_ocr_engine_takes_pages_one_by_one() -> None:
    assert plan_tasks(2, 4, [True] * 5, Engine.RAPIDOCR, text_per_task=32, ocr_per_task=1) == [(2, 2), (3, 3), (4, 4)]


def test_auto_cuts_each_run_to_its_own_size() -> None:
    kinds = [True, True, True, False, False, True, False]
    plan = plan_tasks(1, 7, kinds, Engine.AUTO, text_per_task=2, ocr_per_task=1)
    assert plan == [(1, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]


def test_auto_plan_covers_every_page_once() -> None:
    kinds = [i % 3 == 0 for i in range(100)]
    plan = plan_tasks(5, 95, kinds, Engine.AUTO, text_per_task=8, ocr_per_task=2)
    pages = [p for a, b in plan for p in range(a, b + 1)]
    assert pages == list(range(5, 96))
