"""The OCR consumer: one ``PageTask`` at a time, one event per page.

prefetch=1, so a busy worker never hoards tasks that an idle one could take.
The PDF comes from the local cache (fetched once per worker), each page is
read by the engine the job asked for (``auto``: the text layer where it holds
real text, OCR otherwise), and every page ends as ``PageCompleted`` or
``PageFailed``. Rendering and OCR run on a thread so the event loop keeps the
AMQP heartbeats going through a page that takes seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from consumer import metrics
from consumer.amqp import Publisher, ack, attempt_of
from consumer.engines import OcrEngine, make_engine
from consumer.pdf import PdfDocument, has_real_text
from consumer.service import Handler, run_consumer, settle_failure
from consumer.storage import PdfCache, Storage
from schemas.errors import PagewireError, PermanentError
from schemas.messages import Block, Engine, JobOptions, PageCompleted, PageFailed, PageTask, parse_as
from schemas.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Engines:
    """The OCR engines this worker has loaded, made on first use and kept."""

    threads: int
    default: Engine
    model_dir: Path | None = None
    loaded: dict[Engine, OcrEngine] = field(default_factory=dict)

    def get(self, engine: Engine) -> OcrEngine:
        """The OCR engine for a job's choice; ``auto`` means this worker's default."""
        wanted = self.default if engine in (Engine.AUTO, Engine.TEXT) else engine
        if wanted not in self.loaded:
            self.loaded[wanted] = make_engine(wanted, threads=self.threads, model_dir=self.model_dir)
        return self.loaded[wanted]


def read_page(
    doc: PdfDocument, page_no: int, options: JobOptions, engines: Engines, max_megapixels: float
) -> tuple[str, list[Block], float, Engine, float]:
    """Read one page; blocking. Returns text, blocks, confidence, the engine used and render ms.

    ``auto`` trusts the text layer only when :func:`has_real_text` says it is
    real, so a born-digital page never reaches OCR and a scan always does.
    """
    if options.engine in (Engine.TEXT, Engine.AUTO):
        layer = doc.text_layer(page_no)
        if options.engine == Engine.TEXT or has_real_text(layer.text):
            return layer.text, list(layer.blocks), 1.0, Engine.TEXT, 0.0
    engine = engines.get(options.engine)
    started = time.perf_counter()
    image = doc.render(page_no, dpi=options.dpi, max_megapixels=max_megapixels)
    render_ms = (time.perf_counter() - started) * 1000
    result = engine.read(image)
    return result.text, list(result.blocks), result.confidence, engine.name, render_ms


class Worker:
    """Handles ``PageTask`` messages from the tasks queue."""

    def __init__(self, settings: WorkerSettings, publisher: Publisher, cache: PdfCache, engines: Engines) -> None:
        self.settings = settings
        self.publisher = publisher
        self.cache = cache
        self.engines = engines

    async def handle(self, message: AbstractIncomingMessage) -> None:
        task: PageTask | None = None
        done: set[int] = set()
        try:
            task = parse_as(PageTask, message.body, self.settings.max_message_bytes)
            await self.run_task(task, attempt_of(message), done)
            await ack(message)
        except Exception as exc:  # settle_failure sorts it by class
            if isinstance(exc, PagewireError) and task is None:
                await self.publisher.dead_letter(message, exc, self.settings.topology.tasks_queue)
            current = task

            async def fail_rest(error: PagewireError) -> None:
                if current is None:
                    return
                for page_no in range(current.first_page, current.last_page + 1):
                    if page_no not in done:
                        await self.page_failed(current, page_no, error, attempt_of(message), final=True)

            await settle_failure(
                message,
                exc,
                publisher=self.publisher,
                settings=self.settings,
                queue_name=self.settings.topology.tasks_queue,
                on_final=fail_rest,
                backoff_s=self.settings.retry_backoff_s,
            )

    async def run_task(self, task: PageTask, attempt: int, done: set[int]) -> None:
        path = await asyncio.to_thread(self.cache.fetch, task.source)
        doc = await asyncio.to_thread(PdfDocument, path)
        try:
            for page_no in range(task.first_page, task.last_page + 1):
                with metrics.log_context(job_id=task.job_id, page_no=page_no):
                    await self.run_page(task, doc, page_no, attempt, done)
        finally:
            await asyncio.to_thread(doc.close)

    async def run_page(self, task: PageTask, doc: PdfDocument, page_no: int, attempt: int, done: set[int]) -> None:
        """Read one page and publish its event; a bad page fails alone."""
        started = time.perf_counter()
        try:
            text, blocks, confidence, engine, render_ms = await asyncio.to_thread(
                read_page, doc, page_no, task.options, self.engines, self.settings.max_megapixels
            )
        except PermanentError as exc:
            await self.page_failed(task, page_no, exc, attempt, final=True)
            done.add(page_no)
            return
        event = PageCompleted(
            job_id=task.job_id,
            page_no=page_no,
            text=text,
            blocks=blocks,
            confidence=max(0.0, min(1.0, confidence)),
            engine=engine,
            duration_ms=(time.perf_counter() - started) * 1000,
            render_ms=render_ms,
            worker=self.settings.worker_name,
            attempt=attempt,
        )
        await self.publisher.publish_event(event)
        metrics.observe_page(engine, "completed", event.duration_ms / 1000)
        done.add(page_no)
        log.info("job %s page %s read by %s in %.0f ms", task.job_id, page_no, engine, event.duration_ms)

    async def page_failed(self, task: PageTask, page_no: int, error: PagewireError, attempt: int, final: bool) -> None:
        log.warning("job %s page %s failed (%s): %s", task.job_id, page_no, error.code, error.message)
        metrics.observe_page(str(task.options.engine), "failed", 0.0)
        await self.publisher.publish_event(
            PageFailed(
                job_id=task.job_id,
                page_no=page_no,
                error_code=error.code,
                message=error.message,
                attempt=attempt,
                final=final,
                worker=self.settings.worker_name,
            )
        )


async def run(settings: WorkerSettings, grace_s: float = 60.0) -> None:
    """``pagewire worker``: read pages until SIGTERM."""
    storage = Storage(settings)
    cache = PdfCache(storage, settings.cache_dir, settings.cache_max_bytes, settings.max_pdf_bytes)
    engines = Engines(threads=settings.ocr_threads, default=settings.engine, model_dir=settings.nemotron_ocr_model_dir)

    async def make_handler(_: AbstractRobustConnection, publisher: Publisher) -> Handler:
        # Load the default engine before taking work: the first task should not pay for model start-up.
        # This runs with the health endpoint up (alive, not ready), so a start-up probe sees progress.
        try:
            await asyncio.to_thread(engines.get, settings.engine)
        except PermanentError as exc:
            log.error("worker cannot load its engine %s: %s", settings.engine, exc)
            raise
        return Worker(settings, publisher, cache, engines).handle

    await run_consumer(
        settings=settings,
        role="worker",
        queue_name=settings.topology.tasks_queue,
        prefetch=1,
        make_handler=make_handler,
        grace_s=grace_s,
    )
