"""OCR pages read in batches on one device, rendered ahead of it by a pool of processes.

A GPU reads a batch of pages in little more time than one page, so it waits on
the CPUs that render them unless they render ahead. Here each render child
takes the next page as soon as it is free; rendered pages queue up to two
batches deep; and the device, the moment it is free, takes every page rendered
so far, up to a batch. The worker publishes a batch's events as soon as that
batch is read.

The sandbox's guarantees hold. Every render is a call in a render child, with
its time budget and memory cap, so a page that fails to render fails alone. A
batch the device fails on is read again a page at a time, so the page at fault
fails alone. A device that dies on a page alone raises for the task, which is
retried and dead-lettered as any other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from consumer.child import child_read_batch, child_render
from consumer.engines import PageText
from consumer.sandbox import Sandbox
from consumer.shared_images import SharedImage, free
from schemas.errors import ErrorCode, PagewireError, PermanentError
from schemas.messages import Engine, JobOptions
from schemas.settings import WorkerSettings

log = logging.getLogger(__name__)

_Rendered = tuple[int, SharedImage | PermanentError, float]


@dataclass(frozen=True)
class BatchedPage:
    """One page of a batch: its text, or why it could not be read."""

    page_no: int
    result: PageText | PermanentError
    engine: Engine
    render_ms: float


class BatchReader:
    """Reads pages in batches of ``batch_pages`` on the ``device`` sandbox, rendered ahead by ``renderers``."""

    def __init__(
        self,
        device: Sandbox,
        renderers: Sequence[Sandbox],
        batch_pages: int,
        *,
        render_budget_s: float,
        read_budget_s: float,
        max_megapixels: float,
    ) -> None:
        """``read_budget_s`` bounds one batch on the device, ``render_budget_s`` one page in a render child."""
        if batch_pages < 1 or not renderers:
            raise ValueError("a batch reader needs batches of one page or more and one renderer or more")
        self.device = device
        self.renderers = list(renderers)
        self.batch_pages = batch_pages
        self.render_budget_s = render_budget_s
        self.read_budget_s = read_budget_s
        self.max_megapixels = max_megapixels
        self.busy_s = 0.0
        """Seconds the device spent reading, as its own process measured them."""

    @classmethod
    def for_worker(cls, device: Sandbox, renderers: Sequence[Sandbox], settings: WorkerSettings) -> BatchReader:
        """The reader a worker with ``settings`` reads with: its batch size, budgets and page-size limit."""
        return cls(
            device,
            renderers,
            settings.gpu_batch_pages,
            render_budget_s=settings.ocr_budget_s,
            read_budget_s=settings.ocr_budget_s,
            max_megapixels=settings.max_megapixels,
        )

    async def read(self, path: str, page_nos: Sequence[int], options: JobOptions) -> AsyncIterator[list[BatchedPage]]:
        """The pages' readings, a batch at a time, each batch in page order."""
        pending = collections.deque(page_nos)
        rendered: asyncio.Queue[_Rendered] = asyncio.Queue(maxsize=2 * self.batch_pages)
        stopping = False

        async def render_with(sandbox: Sandbox) -> None:
            while pending and not stopping:
                item = await self._render(sandbox, path, pending.popleft(), options)
                if stopping:
                    _drop(item)
                    return
                await rendered.put(item)

        rendering = [asyncio.create_task(render_with(sandbox), name=sandbox.name) for sandbox in self.renderers]
        remaining = len(page_nos)
        try:
            while remaining:
                # The device takes what is rendered when it is free, up to a batch: it waits only for a
                # first page. While it reads, the next batch renders, so batches grow to full size
                # wherever the device is slower than the renderers, and it never idles beside a page.
                batch = [await rendered.get()]
                while len(batch) < min(self.batch_pages, remaining) and not rendered.empty():
                    batch.append(rendered.get_nowait())
                remaining -= len(batch)
                yield sorted(await self._read(batch, options), key=lambda page: page.page_no)
        finally:
            # A read that ended early (cancelled, or failed): no new render starts, the ones under
            # way end (within their budget) and every page rendered for it has its memory freed.
            # Cancelling a render instead would leave its image in shared memory for good.
            stopping = True
            pending.clear()
            while True:
                while not rendered.empty():
                    _drop(rendered.get_nowait())
                if all(task.done() for task in rendering):
                    break
                await asyncio.wait(rendering, timeout=0.05)

    async def _render(self, sandbox: Sandbox, path: str, page_no: int, options: JobOptions) -> _Rendered:
        """One page rendered in a render child, or why it could not be."""
        try:
            image, render_ms = await sandbox.call(
                child_render, path, page_no, options.dpi, self.max_megapixels, budget_s=self.render_budget_s
            )
            return page_no, image, render_ms
        except PermanentError as exc:
            return page_no, exc, 0.0
        except PagewireError as exc:
            # A render child that died: the page is tried once more in a fresh child before it fails.
            log.warning("page %s: render process died (%s); rendering it once more", page_no, exc)
            try:
                image, render_ms = await sandbox.call(
                    child_render, path, page_no, options.dpi, self.max_megapixels, budget_s=self.render_budget_s
                )
                return page_no, image, render_ms
            except PagewireError as again:
                return page_no, PermanentError(again.code, again.message), 0.0
        except Exception as exc:  # raised by pdfium or the renderer in the child: this page's fault
            return page_no, PermanentError(ErrorCode.RENDER_FAILED, f"render failed: {exc}"), 0.0

    async def _read(self, batch: list[_Rendered], options: JobOptions) -> list[BatchedPage]:
        out = [BatchedPage(p, image, options.engine, 0.0) for p, image, _ in batch if isinstance(image, PermanentError)]
        good = [(p, image, ms) for p, image, ms in batch if not isinstance(image, PermanentError)]
        if not good:
            return out
        try:
            return await self._read_rendered(good, out, options)
        finally:
            free([image for _, image, _ in good])

    async def _read_rendered(
        self, good: list[tuple[int, SharedImage, float]], out: list[BatchedPage], options: JobOptions
    ) -> list[BatchedPage]:
        try:
            return out + await self._read_on_device(good, options)
        except PermanentError as exc:
            if len(good) == 1:
                return [*out, BatchedPage(good[0][0], exc, options.engine, good[0][2])]
            log.warning("a batch of %s pages failed on the device (%s): reading them one at a time", len(good), exc)
        for page in good:
            try:
                out += await self._read_on_device([page], options)
            except PermanentError as exc:
                out.append(BatchedPage(page[0], exc, options.engine, page[2]))
        return out

    async def _read_on_device(
        self, pages: list[tuple[int, SharedImage, float]], options: JobOptions
    ) -> list[BatchedPage]:
        texts, engine, busy_s = await self.device.call(
            child_read_batch, [image for _, image, _ in pages], options.engine, budget_s=self.read_budget_s
        )
        self.busy_s += busy_s
        return [
            BatchedPage(page_no, text, engine, render_ms)
            for (page_no, _, render_ms), text in zip(pages, texts, strict=True)
        ]


def _drop(item: _Rendered) -> None:
    """Free the memory of a rendered page no batch will take."""
    if isinstance(item[1], SharedImage):
        free([item[1]])


def render_pool(size: int, memory_mb: int, name: str = "render") -> list[Sandbox]:
    """``size`` render children, each with the page process's memory cap."""
    return [Sandbox(f"{name}-{n}", memory_mb=memory_mb) for n in range(1, size + 1)]
