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
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from adapters import metrics
from adapters.amqp import Publisher, ack, attempt_of
from adapters.logs import log_context
from adapters.storage import PdfCache, Storage
from consumer.batches import BatchReader, render_pool
from consumer.cancel import CancelledJobs
from consumer.child import LayerReading, child_ocr_page, child_setup, child_text_layer, child_text_layers
from consumer.lanes import PriorityGate
from consumer.pdf import TextLayer
from consumer.planner import cut, runs
from consumer.reading import PageReading, combine, from_text_layer, takes_text_layer
from consumer.sandbox import Sandbox
from consumer.service import Handler, run_consumer, settle_failure
from schemas.errors import ErrorCode, PagewireError, PermanentError
from schemas.messages import (
    Engine,
    JobOptions,
    PageCompleted,
    PageFailed,
    PageTask,
    parse_as,
)
from schemas.names import HIGH_PRIORITY, HIGH_TASK_ROUTING_KEY
from schemas.settings import WorkerSettings

log = logging.getLogger(__name__)


LAYER_ENGINES = (Engine.TEXT, Engine.AUTO)
"""The jobs' engines whose pages have their text layer read first."""

TEXT_CHUNK = 8
"""Text layers read in one sandbox call: a round trip per page would cost as much as reading it."""


def _chunk(first: int, last: int) -> list[int]:
    """The pages of the text-layer call that starts at ``first``."""
    return list(range(first, min(last, first + TEXT_CHUNK - 1) + 1))


async def _confirmed(publishing: list[asyncio.Task[None]]) -> None:
    """Wait for these publishes; the first that failed raises."""
    if publishing:
        tasks = publishing.copy()
        publishing.clear()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result


class Worker:
    """Handles ``PageTask`` messages from the tasks queue."""

    def __init__(
        self,
        settings: WorkerSettings,
        publisher: Publisher,
        cache: PdfCache,
        sandbox: Sandbox,
        cancelled: CancelledJobs | None = None,
        batches: BatchReader | None = None,
    ) -> None:
        """``batches``: read OCR pages in batches on the device with it (a GPU worker), else a page at a time."""
        self.settings = settings
        self.publisher = publisher
        self.cache = cache
        self.sandbox = sandbox
        self.cancelled = cancelled or CancelledJobs()
        self.gate = PriorityGate()
        self.batches = batches
        # OCR pages of auto tasks are handed on in tasks this size: a device's batch, or what the CPU reads.
        self.ocr_task_pages = settings.gpu_batch_pages if batches is not None else settings.ocr_pages_per_task

    async def handle(self, message: AbstractIncomingMessage) -> None:
        async with self.gate.hold(high=message.routing_key == HIGH_TASK_ROUTING_KEY):
            await self._handle(message)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
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
        if task.job_id in self.cancelled:
            log.info("job %s is cancelled: task %s dropped", task.job_id, task.task_id)
            return
        started = time.perf_counter()
        path = str(await asyncio.to_thread(self.cache.fetch, task.source))
        layers: dict[int, LayerReading | None] = {}
        # In auto mode the planner sized the task for text pages. Pages that turn out to need OCR
        # (seconds each) are handed on as tasks of their own, so that every idle worker takes some.
        pages = task.last_page - task.first_page + 1
        hands_on = task.options.engine == Engine.AUTO and pages > self.ocr_task_pages
        handed: list[int] = []
        # With a device that reads batches: the pages that need OCR, read together after the loop.
        batched: list[tuple[int, TextLayer | None]] = []
        # Pages read from their text layer are published without waiting for each confirm in turn;
        # all are confirmed before the next OCR page, the end of the task, and its ack.
        publishing: list[asyncio.Task[None]] = []
        # The next run of text layers, handed to the child as soon as this run is in: the child reads
        # it while this process turns this run into events, so neither waits for the other.
        ahead: tuple[int, asyncio.Task[dict[int, LayerReading | None]]] | None = None
        try:
            for page_no in range(task.first_page, task.last_page + 1):
                if task.deadline is not None and datetime.now(UTC) > task.deadline:
                    await _confirmed(publishing)
                    late = PermanentError(ErrorCode.DEADLINE_EXCEEDED, f"the job's deadline {task.deadline} has passed")
                    for late_page in range(page_no, task.last_page + 1):
                        await self.page_failed(task, late_page, late, attempt, final=True)
                        done.add(late_page)
                    return
                if task.job_id in self.cancelled:  # checked between pages: a cancel stops a job within one page
                    log.info("job %s is cancelled: pages %s-%s dropped", task.job_id, page_no, task.last_page)
                    return
                if task.options.engine in (Engine.TEXT, Engine.AUTO) and page_no not in layers:
                    if ahead is not None and ahead[0] == page_no:
                        layers = await ahead[1]
                    else:
                        layers = await self.read_layers(path, _chunk(page_no, task.last_page))
                    following = page_no + len(layers)
                    ahead = None
                    if following <= task.last_page:
                        ahead = (
                            following,
                            asyncio.create_task(self.read_layers(path, _chunk(following, task.last_page))),
                        )
                        await asyncio.sleep(0)  # the read is handed to the child before these pages are made events
                with log_context(job_id=task.job_id, page_no=page_no):
                    given = layers.pop(page_no, None)
                    if (
                        given is not None
                        and isinstance(given[0], TextLayer)
                        and takes_text_layer(task.options, given[0])
                    ):
                        reading = from_text_layer(given[0])
                        publish = self.publish_page(task, page_no, reading, given[1], attempt, done)
                        publishing.append(asyncio.create_task(publish))
                        continue
                    if hands_on and given is not None and isinstance(given[0], TextLayer):
                        handed.append(page_no)
                        continue
                    if self.batches is not None:
                        layer = given[0] if given is not None else None
                        if isinstance(layer, TextLayer):
                            batched.append((page_no, layer))
                            continue
                        if given is None and task.options.engine not in LAYER_ENGINES:
                            batched.append((page_no, None))
                            continue
                    await _confirmed(publishing)
                    await self.run_page(task, path, page_no, attempt, done, given)
            await _confirmed(publishing)
            if batched:
                await self.read_batched(task, path, batched, attempt, done)
            await self.hand_on(task, handed, done)
            log.info(
                "job %s task %s: pages %s-%s done in %.0f ms (%s handed on)",
                task.job_id,
                task.task_id,
                task.first_page,
                task.last_page,
                (time.perf_counter() - started) * 1000,
                len(handed),
            )
        finally:
            # On the way out with an error: every publish has settled, so ``done`` is exact; a read
            # ahead runs to its end (its pages are not counted), so the next call has the child to itself.
            await asyncio.gather(*publishing, *([ahead[1]] if ahead else []), return_exceptions=True)

    async def hand_on(self, task: PageTask, pages: list[int], done: set[int]) -> None:
        """Publish ``pages`` of ``task`` (they need OCR) as tasks of their own, and count them done here.

        Confirmed before the task is acked: a worker killed in between leaves the task to be
        redelivered, and its pages read again (each counted once in the table)."""
        if not pages:
            return
        ranges = [r for a, b in runs(pages) for r in cut(a, b, self.ocr_task_pages)]
        await asyncio.gather(
            *(
                self.publisher.publish_task(
                    task.model_copy(update={"task_id": f"{task.task_id}/{a}-{b}", "first_page": a, "last_page": b}),
                    high=task.priority >= HIGH_PRIORITY,
                )
                for a, b in ranges
            )
        )
        done.update(pages)
        log.info("job %s: %s pages that need OCR handed on in %s tasks", task.job_id, len(pages), len(ranges))

    async def read_batched(
        self, task: PageTask, path: str, pages: list[tuple[int, TextLayer | None]], attempt: int, done: set[int]
    ) -> None:
        """Read ``pages`` (with their text layers, where read) in batches on the device, publishing as each ends."""
        assert self.batches is not None
        layers = dict(pages)
        started = time.perf_counter()
        busy_s = self.batches.busy_s
        async for batch in self.batches.read(path, list(layers), task.options):
            for page in batch:
                with log_context(job_id=task.job_id, page_no=page.page_no):
                    if isinstance(page.result, PermanentError):
                        await self.page_failed(task, page.page_no, page.result, attempt, final=True)
                        done.add(page.page_no)
                        continue
                    reading = combine(layers[page.page_no], page.result, page.engine, page.render_ms)
                    # A page's share of the wall time its batch took, rendering ahead included.
                    spent = (time.perf_counter() - started) * 1000 / len(batch)
                    await self.publish_page(task, page.page_no, reading, spent, attempt, done)
            metrics.DEVICE_BUSY_SECONDS.inc(self.batches.busy_s - busy_s)
            busy_s = self.batches.busy_s
            started = time.perf_counter()
            if task.job_id in self.cancelled or (task.deadline is not None and datetime.now(UTC) > task.deadline):
                # Between batches, as between pages: the rest goes back as the page loop would leave it.
                rest = [p for p in layers if p not in done]
                late = PermanentError(ErrorCode.DEADLINE_EXCEEDED, f"the job's deadline {task.deadline} has passed")
                if task.job_id not in self.cancelled:
                    for page_no in rest:
                        await self.page_failed(task, page_no, late, attempt, final=True)
                        done.add(page_no)
                return

    async def read_layers(self, path: str, page_nos: list[int]) -> dict[int, LayerReading | None]:
        """The text layers of a run of pages in one sandbox call. None for a page means: read it alone.
        That is each page's lot when the call failed (over its budget, or pdfium crashed), so that
        the page at fault is found and fails on its own."""
        if len(page_nos) < 2:
            return dict.fromkeys(page_nos)
        try:
            readings = await self.sandbox.call(child_text_layers, path, page_nos, budget_s=self.settings.text_budget_s)
        except PagewireError as exc:
            log.warning("pages %s-%s failed together (%s): reading them one at a time", page_nos[0], page_nos[-1], exc)
            return dict.fromkeys(page_nos)
        return dict(zip(page_nos, readings, strict=True))

    async def read(self, path: str, page_no: int, options: JobOptions, layer: TextLayer | None = None) -> PageReading:
        """Read a page in the sandbox: the text layer on a short budget (unless it is given), OCR on a long one."""
        if layer is None and options.engine in (Engine.TEXT, Engine.AUTO):
            layer = await self.sandbox.call(child_text_layer, path, page_no, budget_s=self.settings.text_budget_s)
        if layer is not None and takes_text_layer(options, layer):
            return from_text_layer(layer)
        ocr, engine, render_ms = await self.sandbox.call(
            child_ocr_page, path, page_no, options, self.settings.max_megapixels, budget_s=self.settings.ocr_budget_s
        )
        return combine(layer, ocr, engine, render_ms)

    async def run_page(
        self, task: PageTask, path: str, page_no: int, attempt: int, done: set[int], given: LayerReading | None = None
    ) -> None:
        """Read one page and publish its event; a bad page fails alone. ``given``: its text layer, read already."""
        started = time.perf_counter()
        layer, layer_ms = given or (None, 0.0)
        try:
            if isinstance(layer, PermanentError):
                raise layer
            reading = await self.read(path, page_no, task.options, layer)
        except PermanentError as exc:
            await self.page_failed(task, page_no, exc, attempt, final=True)
            done.add(page_no)
            return
        spent = (time.perf_counter() - started) * 1000 + layer_ms
        await self.publish_page(task, page_no, reading, spent, attempt, done)

    async def publish_page(
        self, task: PageTask, page_no: int, reading: PageReading, duration_ms: float, attempt: int, done: set[int]
    ) -> None:
        """Publish a page's ``PageCompleted`` and count it done once the broker has confirmed it."""
        event = PageCompleted(
            job_id=task.job_id,
            page_no=page_no,
            text=reading.text,
            blocks=reading.blocks,
            confidence=max(0.0, min(1.0, reading.confidence)),
            engine=reading.engine,
            text_source=reading.source,
            rotation=reading.rotation,
            number_disagreements=reading.disagreements,
            duration_ms=duration_ms,
            render_ms=reading.render_ms,
            worker=self.settings.worker_name,
            attempt=attempt,
        )
        await self.publisher.publish_event(event)
        metrics.observe_page(reading.engine, "completed", event.duration_ms / 1000)
        done.add(page_no)
        # An OCR page takes seconds and is worth a line; text pages come hundreds a second, so they
        # log at debug, and the task's one line says how they went.
        log.log(
            logging.DEBUG if reading.engine == Engine.TEXT else logging.INFO,
            "job %s page %s read by %s in %.0f ms",
            task.job_id,
            page_no,
            reading.engine,
            event.duration_ms,
        )

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
    sandbox = Sandbox(
        "worker",
        memory_mb=settings.page_memory_mb,
        setup=child_setup,
        setup_args=(
            settings.ocr_threads,
            settings.engine,
            settings.nemotron_ocr_model_dir,
            (settings.sim_batch_ms, settings.sim_page_ms),
            settings.ocr_alphabet,
        ),
    )
    renderers = render_pool(settings.render_processes, settings.page_memory_mb) if settings.gpu_batch_pages else []
    batches = BatchReader.for_worker(sandbox, renderers, settings) if renderers else None

    async def make_handler(connection: AbstractRobustConnection, publisher: Publisher) -> Handler:
        # Load the default engine before taking work: the first task should not pay for model start-up.
        # This runs with the health endpoint up (alive, not ready), so a start-up probe sees progress.
        try:
            await sandbox.start()
        except PermanentError as exc:
            log.error("worker cannot load its engine %s: %s", settings.engine, exc)
            raise
        await asyncio.gather(*(renderer.start() for renderer in renderers))
        cancelled = CancelledJobs()
        await cancelled.listen(connection, settings.topology)
        return Worker(settings, publisher, cache, sandbox, cancelled, batches).handle

    await run_consumer(
        settings=settings,
        role="worker",
        queue_name=settings.topology.tasks_queue,
        more_queues=(settings.topology.tasks_high_queue,),
        prefetch=1,
        make_handler=make_handler,
        grace_s=grace_s,
    )
    sandbox.close()
    for renderer in renderers:
        renderer.close()
