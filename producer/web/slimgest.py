"""The routes slimgest's clients call, served by pagewire jobs: their paths, fields and answers kept."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from producer.web import events as live
from producer.web import jobs as store
from producer.web.access import Caller
from producer.web.errors import ApiError, HttpErrorCode, validation_error
from producer.web.gateway import DPI_DOC, CallerDep, Gateway, GatewayDep, read_pdf, sse_response, submit_pdf
from producer.web.models import ERRORS, SSE_RESPONSE, ErrorBody, LegacyPage, LegacyPdf, LegacyResult
from schemas.errors import ErrorCode
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


async def _run_to_end(gw: Gateway, caller: Caller, data: bytes, filename: str, options: JobOptions) -> LegacyPdf:
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
    file: Annotated[UploadFile, File(description="the PDF")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> LegacyResult | JSONResponse:
    """Read one PDF and answer with its pages once done (slimgest's route; a failed job answers 422)."""
    data = await read_pdf(file, gw.settings.http_max_upload_bytes)
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
    files: Annotated[list[UploadFile], File(description="the PDFs")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> LegacyResult:
    """Read several PDFs side by side and answer once all are done, failed ones included with their code."""
    if len(files) > gw.settings.http_max_files:
        raise ApiError(413, ErrorCode.MESSAGE_TOO_LARGE, f"at most {gw.settings.http_max_files} files a request")
    options = _legacy_options(dpi, dpi_form, engine)
    uploads = [
        (f.filename or f"upload-{i}.pdf", await read_pdf(f, gw.settings.http_max_upload_bytes))
        for i, f in enumerate(files, 1)
    ]
    pdfs = await asyncio.gather(*(_run_to_end(gw, caller, data, name, options) for name, data in uploads))
    return LegacyResult(pdfs=list(pdfs))


@router.post(
    "/process-pdf-stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **ERRORS},
    tags=["slimgest"],
)
async def process_pdf_stream(
    gw: GatewayDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="the PDF")],
    dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
    dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
) -> StreamingResponse:
    """Read one PDF and stream its pages as server-sent events (slimgest's route)."""
    data = await read_pdf(file, gw.settings.http_max_upload_bytes)
    filename = file.filename or "upload.pdf"
    options = _legacy_options(dpi, dpi_form, engine)
    job_id = str(uuid.uuid4())
    inbox = gw.hub.open_inbox(job_id)  # before the submit: not even the first event may slip past
    try:
        await submit_pdf(gw, caller, data, filename=filename, options=options, job_id=job_id)
    except BaseException:
        gw.hub.close_inbox(inbox)
        raise
    # The stream closes the inbox; the task covers a client gone before the stream began.
    return sse_response(_legacy_stream(gw, job_id, filename, inbox), cleanup=BackgroundTask(gw.hub.close_inbox, inbox))
