"""The routes slimgest's clients call, served by pagewire jobs: their paths, fields and answers kept."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from adapters.amqp import queue_depth
from producer.images import image_kind, image_to_pdf
from producer.web import events as live
from producer.web import jobs as store
from producer.web.access import Caller
from producer.web.errors import ApiError, HttpErrorCode, validation_error
from producer.web.gateway import DPI_DOC, CallerDep, Gateway, GatewayDep, HttpSettings, sse_response, submit_pdf
from producer.web.models import (
    ERRORS,
    SSE_RESPONSE,
    BatchRequest,
    ErrorBody,
    LegacyPage,
    LegacyPdf,
    LegacyResult,
    ServiceStatus,
)
from producer.web.uploads import decode_base64, dpi_of, image_limits, read_document
from schemas.errors import ErrorCode, PermanentError
from schemas.messages import TERMINAL_EVENTS, Engine, JobOptions
from schemas.tables import TERMINAL_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

router = APIRouter()


def _legacy_pdf(filename: str, job_id: str, row: dict[str, Any], pages: list[dict[str, Any]]) -> LegacyPdf:
    return LegacyPdf(
        filename=filename,
        job_id=job_id,
        status=row.get("status") or "unknown",
        total_pages=row.get("total_pages"),
        error_code=row.get("error_code"),
        error_message=row.get("error_message"),
        pages=[
            LegacyPage(
                page_number=p["page_no"],
                ocr_text=p.get("text") or "",
                raw_ocr_results=p.get("blocks") or [],
                status=p["status"],
                engine=p.get("engine"),
                confidence=p.get("confidence"),
                error_code=p.get("error_code"),
            )
            for p in pages
        ],
    )


def _legacy_options(dpi_query: float | None, dpi_form: float | None, engine: Engine) -> JobOptions:
    dpi = dpi_form if dpi_form is not None else dpi_query
    try:
        return JobOptions(engine=engine, dpi=round(dpi) if dpi is not None else 150)
    except ValidationError as exc:
        raise validation_error(exc) from exc


async def _run_to_end(
    gw: Gateway, caller: Caller, data: bytes | BinaryIO, filename: str, options: JobOptions
) -> LegacyPdf:
    """Queue one PDF and wait for its end; the rows are then read back, text and boxes included."""
    job_id = str(uuid.uuid4())
    deadline = time.monotonic() + gw.settings.http_wait_s
    with gw.hub.listen(job_id) as inbox:
        await submit_pdf(gw, caller, data, filename=filename, options=options, job_id=job_id)
        while True:
            event = await inbox.get(2.0)
            if isinstance(event, TERMINAL_EVENTS):
                break
            if event is None:  # quiet: the end may have passed before we listened, or been missed
                row = await store.get_job(gw.client.db, job_id)
                if row is not None and row["status"] in TERMINAL_JOB_STATUSES:
                    break
            if time.monotonic() > deadline:
                raise ApiError(
                    504,
                    HttpErrorCode.WAIT_TIMEOUT,
                    f"job {job_id} is not done after {gw.settings.http_wait_s:g} s",
                    job_id=job_id,
                )
    row = await gw.client.final_status(job_id, wait_s=30.0)
    pages = await store.get_pages(gw.client.db, job_id, with_text=True)
    return _legacy_pdf(filename, job_id, row, pages)


async def _legacy_stream(gw: Gateway, job_id: str, filename: str, inbox: live.Inbox) -> AsyncIterator[live.Item]:
    """slimgest's stream: ``start``, ``page`` (page_number, page_text, total_pages_so_far), ``complete``, ``error``."""
    yield ("start", {"status": "processing", "pdf": filename, "job_id": job_id})
    done = 0
    async for name, data in live.follow_job(gw.hub, gw.client.db, job_id, inbox=inbox, quiet_s=2.0):
        if name == "page" and data["status"] in store.DONE_PAGE_STATUSES:
            done += 1
            yield (
                "page",
                {
                    "page_number": data["page_no"],
                    "page_text": data.get("text") or "",
                    "total_pages_so_far": done,
                    "status": data["status"],
                    "engine": data.get("engine"),
                    "job_id": job_id,
                },
            )
        elif name == "complete":
            pages = await store.get_pages(gw.client.db, job_id, with_text=True)
            pdf = _legacy_pdf(filename, job_id, {"status": data["status"]}, pages)
            body = {"status": "complete", "total_pages": len(pdf.pages), "pdf_name": filename, "job_id": job_id}
            yield ("complete", {**body, "pages": [p.model_dump() for p in pdf.pages], "job_status": data["status"]})
        elif name == "error":
            yield (
                "error",
                {
                    "status": "error",
                    "error": data.get("message") or data["status"],
                    "error_code": data.get("error_code"),
                }
                | {"job_id": job_id},
            )


@router.post("/process-pdf", response_model=LegacyResult, responses=ERRORS, tags=["slimgest"])
async def process_pdf(
    gw: GatewayDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="the PDF, or a PNG, JPEG or TIFF image")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> LegacyResult | JSONResponse:
    """Read one PDF and answer with its pages once done (slimgest's route; a failed job answers 422)."""
    data = await read_document(file, gw.settings, dpi=dpi_of(dpi_form or dpi))
    pdf = await _run_to_end(gw, caller, data, file.filename or "upload.pdf", _legacy_options(dpi, dpi_form, engine))
    if pdf.status == JobStatus.FAILED:
        body = ErrorBody(
            error_code=pdf.error_code or "internal_error", message=pdf.error_message or "", job_id=pdf.job_id
        )
        return JSONResponse(body.model_dump(), status_code=422)
    return LegacyResult(pdfs=[pdf])


@router.post("/process-pdfs", response_model=LegacyResult, responses=ERRORS, tags=["slimgest"])
async def process_pdfs(
    gw: GatewayDep,
    caller: CallerDep,
    files: Annotated[list[UploadFile], File(description="the PDFs (or images)")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> LegacyResult:
    """Read several PDFs side by side and answer once all are done, failed ones included with their code."""
    if len(files) > gw.settings.http_max_files:
        raise ApiError(413, ErrorCode.MESSAGE_TOO_LARGE, f"at most {gw.settings.http_max_files} files a request")
    options = _legacy_options(dpi, dpi_form, engine)
    uploads = [
        (f.filename or f"upload-{i}.pdf", await read_document(f, gw.settings, dpi=options.dpi))
        for i, f in enumerate(files, 1)
    ]
    pdfs = await asyncio.gather(*(_run_to_end(gw, caller, data, name, options) for name, data in uploads))
    return LegacyResult(pdfs=list(pdfs))


async def _submit_listening(
    gw: Gateway,
    caller: Caller,
    data: bytes | BinaryIO,
    *,
    filename: str,
    options: JobOptions,
    metadata: dict[str, str] | None = None,
) -> tuple[str, live.Inbox]:
    """Submit a PDF as a new job with an inbox for its events opened first, so not even the first
    event slips past; the inbox is closed again if the submit fails. Returns the job id and inbox."""
    job_id = str(uuid.uuid4())
    inbox = gw.hub.open_inbox(job_id)
    try:
        await submit_pdf(gw, caller, data, filename=filename, options=options, job_id=job_id, metadata=metadata)
    except BaseException:
        gw.hub.close_inbox(inbox)
        raise
    return job_id, inbox


@router.post(
    "/process-pdf-stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **ERRORS},
    tags=["slimgest"],
)
async def process_pdf_stream(
    gw: GatewayDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="the PDF, or a PNG, JPEG or TIFF image")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> StreamingResponse:
    """Read one PDF and stream its pages as server-sent events (slimgest's route)."""
    options = _legacy_options(dpi, dpi_form, engine)
    data = await read_document(file, gw.settings, dpi=options.dpi)
    filename = file.filename or "upload.pdf"
    job_id, inbox = await _submit_listening(gw, caller, data, filename=filename, options=options)
    # The stream closes the inbox; the task covers a client gone before the stream began.
    return sse_response(_legacy_stream(gw, job_id, filename, inbox), cleanup=BackgroundTask(gw.hub.close_inbox, inbox))


# --- slimgest's service status ----------------------------------------------------------------

# The most workers this gateway has seen on the task queue: slimgest's "total" beside "alive", so a
# worker that went away shows as alive < total. The broker knows only who consumes now.
_most_workers = 0


async def service_status(gw: Gateway) -> ServiceStatus:
    """slimgest's ``GET /`` for programs: consumers on the task queue, and tasks waiting in both lanes."""
    global _most_workers
    topology = gw.settings.topology
    url = gw.settings.amqp_url.get_secret_value()
    try:
        # A plain connection a call (adapters.amqp.queue_depth): a robust channel answers from its cache.
        (normal, alive), (high, _) = await asyncio.wait_for(
            asyncio.gather(queue_depth(url, topology.tasks_queue), queue_depth(url, topology.tasks_high_queue)),
            5.0,
        )
    except Exception:  # no queue yet (no worker ever started), or no broker: the service is not serving
        log.warning("service status: the task queues did not answer", exc_info=True)
        return ServiceStatus(status="degraded", workers={"alive": 0, "total": _most_workers}, queue_size=0)
    _most_workers = max(_most_workers, alive)
    status: Literal["ok", "degraded"] = "ok" if gw.hub.running else "degraded"
    return ServiceStatus(status=status, workers={"alive": alive, "total": _most_workers}, queue_size=normal + high)


# --- pages already rendered ------------------------------------------------------------------


@dataclass
class _Batch:
    """The images of one ``/process-batch-stream`` call, sorted into pages of one PDF and refusals."""

    pdf: bytes | None = None
    page_numbers: list[int] = field(default_factory=list)  # page_numbers[i] is the PDF's page i + 1
    refused: list[dict[str, Any]] = field(default_factory=list)  # page_error bodies


def _batch_pdf(body: BatchRequest, settings: HttpSettings, dpi: int) -> _Batch:
    """One PDF of the images that decode, a page each; a ``page_error`` for each that does not.

    Each image is made a one-page PDF alone (so a broken image costs only its
    own page), then pdfium joins the pages, copying their image streams as
    they are.
    """
    batch = _Batch()
    singles: list[bytes] = []
    limits = image_limits(settings)
    for item in body.images:
        data = decode_base64(item.image_base64)
        try:
            if data is None:
                raise PermanentError(ErrorCode.BAD_IMAGE, "image_base64 is not base64")
            if image_kind(data[:16]) is None:
                raise PermanentError(ErrorCode.BAD_IMAGE, "not a PNG, JPEG or TIFF image")
            single = image_to_pdf(data, f"page {item.page_number}", dpi=dpi, limits=limits)
            if _page_count(single) != 1:
                raise PermanentError(ErrorCode.BAD_IMAGE, "one image a page, not a multi-page TIFF")
        except PermanentError as exc:
            batch.refused.append({"page_number": item.page_number, "error": exc.message, "error_code": str(exc.code)})
            continue
        singles.append(single)
        batch.page_numbers.append(item.page_number)
    if singles:
        batch.pdf = _join(singles)
    return batch


def _page_count(pdf: bytes) -> int:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        return len(document)
    finally:
        document.close()


def _join(pdfs: list[bytes]) -> bytes:
    import io

    import pypdfium2 as pdfium

    out = pdfium.PdfDocument.new()
    try:
        for data in pdfs:
            part = pdfium.PdfDocument(data)
            try:
                out.import_pages(part)
            finally:
                part.close()
        buffer = io.BytesIO()
        out.save(buffer)
        return buffer.getvalue()
    finally:
        out.close()


async def _batch_stream(
    gw: Gateway, batch: _Batch, job_id: str | None, inbox: live.Inbox | None
) -> AsyncIterator[live.Item]:
    """slimgest's batch stream: ``start``, ``page_error`` for refused images, a ``page`` each, ``complete``."""
    total = len(batch.page_numbers) + len(batch.refused)
    yield ("start", {"status": "processing", "total_images": total, "job_id": job_id})
    for refused in batch.refused:
        yield ("page_error", {**refused, "job_id": job_id})
    processed = 0
    if job_id is None or inbox is None:
        yield ("complete", {"status": "complete", "pages_processed": 0, "job_id": None})
        return
    async for name, data in live.follow_job(gw.hub, gw.client.db, job_id, inbox=inbox, quiet_s=2.0):
        if name == "page" and data["status"] in store.DONE_PAGE_STATUSES:
            index = data["page_no"] - 1
            page_number = batch.page_numbers[index] if 0 <= index < len(batch.page_numbers) else data["page_no"]
            if data["status"] == "completed":
                processed += 1
                yield (
                    "page",
                    {
                        "page_number": page_number,
                        "ocr_text": data.get("text") or "",
                        "raw_ocr_results": data.get("blocks") or [],
                        "engine": data.get("engine"),
                        "confidence": data.get("confidence"),
                        "job_id": job_id,
                    },
                )
            else:
                yield (
                    "page_error",
                    {
                        "page_number": page_number,
                        "error": data.get("error_message") or "the page failed",
                        "error_code": data.get("error_code"),
                        "job_id": job_id,
                    },
                )
        elif name == "complete":
            yield ("complete", {"status": "complete", "pages_processed": processed, "job_id": job_id})
        elif name == "error":
            yield (
                "error",
                {
                    "status": "error",
                    "error": data.get("message") or data["status"],
                    "error_code": data.get("error_code"),
                    "job_id": job_id,
                },
            )


@router.post(
    "/process-batch-stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **ERRORS},
    tags=["slimgest"],
)
async def process_batch_stream(
    gw: GatewayDep,
    caller: CallerDep,
    body: BatchRequest,
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    engine: Annotated[Engine, Query()] = Engine.AUTO,
) -> StreamingResponse:
    """Read pages already rendered (base64 PNG or JPEG, 64 at most) as one job, streamed as server-sent events.

    Events: ``start``, ``page_error`` for an image that does not decode, one
    ``page`` per image read (``page_number``, ``ocr_text``, ``raw_ocr_results``),
    then ``complete`` (``pages_processed``) or ``error``.
    """
    options = _legacy_options(dpi, None, engine)
    batch = await asyncio.to_thread(_batch_pdf, body, gw.settings, options.dpi)
    if batch.pdf is None:
        return sse_response(_batch_stream(gw, batch, None, None))
    job_id, inbox = await _submit_listening(
        gw,
        caller,
        batch.pdf,
        filename=f"batch of {len(batch.page_numbers)} images",
        options=options,
        metadata={"api": "slimgest-batch"},
    )
    log.info("queued a batch of %d images as job %s", len(batch.page_numbers), job_id)
    return sse_response(_batch_stream(gw, batch, job_id, inbox), cleanup=BackgroundTask(gw.hub.close_inbox, inbox))
