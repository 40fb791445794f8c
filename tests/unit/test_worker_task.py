"""A task's pages in the worker: text layers read a run at a time, every page published once, a run
that fails together read again page by page. A real sandbox child reads a real PDF; the broker and
S3 are stood in for by a list of published events and a path on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

import consumer.worker as worker_module
from consumer.child import child_text_layers
from consumer.pdf import TextLayer
from consumer.reading import PageReading, from_text_layer
from consumer.sandbox import Sandbox
from consumer.worker import TEXT_CHUNK, Worker
from schemas.errors import ErrorCode, PermanentError
from schemas.messages import Engine, JobOptions, PageCompleted, PageTask, Source
from schemas.settings import WorkerSettings
from tools.samples import TextRun, lines, text_pdf

T = TypeVar("T")


class Published:
    """Stands in for the publisher: keeps what would have gone to the events exchange."""

    def __init__(self) -> None:
        self.events: list[BaseModel] = []
        self.tasks: list[tuple[PageTask, bool]] = []

    async def publish_event(self, message: BaseModel) -> None:
        self.events.append(message)

    async def publish_task(self, message: PageTask, *, high: bool = False) -> None:
        self.tasks.append((message, high))


class LocalCache:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self, source: Source) -> Path:
        return self.path


class CountingSandbox(Sandbox):
    """A real sandbox that counts its calls by function, and can refuse runs of text layers."""

    def __init__(self, refuse_runs: bool = False) -> None:
        super().__init__("test", memory_mb=0)
        self.refuse_runs = refuse_runs
        self.calls: list[str] = []

    async def call(self, fn: Callable[..., T], *args: Any, budget_s: float) -> T:
        self.calls.append(fn.__name__)
        if self.refuse_runs and fn is child_text_layers:
            raise PermanentError(ErrorCode.PDF_TOO_COMPLEX, "took longer than its budget")
        return await super().call(fn, *args, budget_s=budget_s)


def task_of(pages: int, priority: int = 0) -> PageTask:
    return PageTask(
        job_id="job-1",
        source=Source(bucket="pagewire", key="jobs/job-1/source.pdf"),
        first_page=1,
        last_page=pages,
        options=JobOptions(engine=Engine.AUTO),
        priority=priority,
    )


def text_page(n: int) -> list[TextRun]:
    return lines([f"Page {n} of a born-digital document with a real text layer."])


async def run(
    tmp_path: Path,
    pages: int | list[list[TextRun]],
    sandbox: CountingSandbox,
    settings: WorkerSettings | None = None,
    priority: int = 0,
) -> tuple[Published, set[int]]:
    content = [text_page(n) for n in range(1, pages + 1)] if isinstance(pages, int) else pages
    path = tmp_path / "doc.pdf"
    path.write_bytes(text_pdf(content))
    published = Published()
    worker = Worker(settings or WorkerSettings(), published, LocalCache(path), sandbox)  # type: ignore[arg-type]
    done: set[int] = set()
    try:
        # The child starts first, on start-up's own budget: spawning it on a busy machine can take
        # longer than a text page's 5 s.
        await sandbox.start()
        sandbox.calls.clear()
        await worker.run_task(task_of(len(content), priority), attempt=1, done=done)
    finally:
        sandbox.close()
    return published, done


async def test_text_pages_are_read_a_run_at_a_time_and_each_published_once(tmp_path: Path) -> None:
    sandbox = CountingSandbox()
    published, done = await run(tmp_path, TEXT_CHUNK + 2, sandbox)

    pages = [e.page_no for e in published.events if isinstance(e, PageCompleted)]
    assert sorted(pages) == list(range(1, TEXT_CHUNK + 3))
    assert done == set(pages)
    assert all(isinstance(e, PageCompleted) and e.engine == Engine.TEXT for e in published.events)
    assert next(e for e in published.events if isinstance(e, PageCompleted) and e.page_no == 3).text.startswith(
        "Page 3 of"
    )
    # One call for the first eight pages, one for the last two.
    assert sandbox.calls == ["child_text_layers", "child_text_layers"]


async def test_the_next_run_is_handed_to_the_child_before_this_run_becomes_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = CountingSandbox()

    def logged(layer: TextLayer) -> PageReading:
        sandbox.calls.append("event")
        return from_text_layer(layer)

    monkeypatch.setattr(worker_module, "from_text_layer", logged)
    published, _ = await run(tmp_path, 2 * TEXT_CHUNK + 1, sandbox)

    # The child reads pages 9-16 while 1-8 are turned into events, and so on; page 17, alone in
    # its run, is read alone once the run before it is in.
    assert sandbox.calls == (
        ["child_text_layers", "child_text_layers"]
        + ["event"] * TEXT_CHUNK
        + ["event"] * TEXT_CHUNK
        + ["child_text_layer", "event"]
    )
    assert sorted(e.page_no for e in published.events if isinstance(e, PageCompleted)) == list(
        range(1, 2 * TEXT_CHUNK + 2)
    )


async def test_a_run_that_fails_together_is_read_again_page_by_page(tmp_path: Path) -> None:
    sandbox = CountingSandbox(refuse_runs=True)
    published, done = await run(tmp_path, 3, sandbox)

    assert sorted(e.page_no for e in published.events if isinstance(e, PageCompleted)) == [1, 2, 3]
    assert done == {1, 2, 3}
    assert sandbox.calls == ["child_text_layers", "child_text_layer", "child_text_layer", "child_text_layer"]


async def test_a_single_page_task_is_read_alone(tmp_path: Path) -> None:
    sandbox = CountingSandbox()
    published, _ = await run(tmp_path, 1, sandbox)

    assert [e.page_no for e in published.events if isinstance(e, PageCompleted)] == [1]
    assert sandbox.calls == ["child_text_layer"]


async def test_pages_that_need_ocr_are_handed_on_as_tasks_of_their_own(tmp_path: Path) -> None:
    # Given an auto task over text pages with blank pages (no text layer: OCR) at 2, 4, 5 and 6
    blank: list[TextRun] = []
    content = [text_page(1), blank, text_page(3), blank, blank, blank, text_page(7)]
    sandbox = CountingSandbox()
    published, done = await run(tmp_path, content, sandbox, WorkerSettings(ocr_pages_per_task=2), priority=9)

    # Then the text pages are published here, and the OCR pages go out as tasks of at most two
    # pages, in the high lane like the task they came from; this worker runs no OCR
    assert sorted(e.page_no for e in published.events if isinstance(e, PageCompleted)) == [1, 3, 7]
    assert [(t.first_page, t.last_page, high) for t, high in published.tasks] == [
        (2, 2, True),
        (4, 5, True),
        (6, 6, True),
    ]
    assert all(t.job_id == "job-1" and t.options.engine == Engine.AUTO for t, _ in published.tasks)
    assert len({t.task_id for t, _ in published.tasks}) == 3
    assert "child_ocr_page" not in sandbox.calls
    # Every page is accounted for: a failure now would not fail the handed-on pages here
    assert done == set(range(1, 8))
