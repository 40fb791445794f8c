"""The routes DeepSeek-OCR's async job server's clients call, served by ordinary pagewire jobs.

Its clients create a job (``POST /jobs/create``), poll ``GET /jobs/{id}``
until ``completed``, ``failed`` or ``cancelled``, then download the Markdown
and read the metadata; they also list (``GET /jobs?limit=N``), cancel
(``DELETE /jobs/{id}``) and check ``GET /health``. The paths it shares with
pagewire's own routes are served there (native.py), with DeepSeek's fields
added (views.py); the three only DeepSeek has are here.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from producer.web.access import Caller
from producer.web.errors import ApiError
from producer.web.gateway import CallerDep, GatewayDep, JobIdPath, links, owned_job, submit_upload
from producer.web.models import ERRORS, DeepSeekAccepted, DeepSeekMetadata
from producer.web.uploads import read_document
from producer.web.views import (
    API_KEY,
    DEEPSEEK,
    ENDED_WITH_RESULT,
    attachment,
    deepseek_status,
    download_name,
    filename_of,
)
from schemas.errors import ErrorCode
from schemas.fields import clean_name
from schemas.messages import Engine, JobOptions

log = logging.getLogger(__name__)

router = APIRouter()
PROMPT_CHARS = 1000


@router.post("/jobs/create", response_model=DeepSeekAccepted, responses=ERRORS, tags=["deepseek"])
async def create(
    gw: GatewayDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="the PDF, or a PNG, JPEG or TIFF image")],
    prompt: Annotated[str | None, Form(description="kept with the job; pagewire's engines take no prompt")] = None,
    engine: Annotated[Engine, Form()] = Engine.AUTO,
    dpi: Annotated[int, Form(ge=36, le=600)] = 150,
) -> DeepSeekAccepted:
    """Queue a file as DeepSeek-OCR's server does; answers at once. ``GET /jobs/{id}`` then speaks DeepSeek's words."""
    options = JobOptions(engine=engine, dpi=dpi)
    filename = file.filename or "upload.pdf"
    data = await read_document(file, gw.settings, dpi=options.dpi)
    form = {"engine": options.engine.value, "dpi": options.dpi}
    # DeepSeek's prompts hold line breaks ("<image>\nConvert..."); metadata values are names: one line.
    extra = {API_KEY: DEEPSEEK, **({"prompt": clean_name(" ".join(prompt.split()), PROMPT_CHARS)} if prompt else {})}
    queued = await submit_upload(gw, caller, data, filename, form, metadata=extra)
    return DeepSeekAccepted(
        job_id=queued.job_id, message=f"{filename} queued as job {queued.job_id}", links=links(queued.job_id)
    )


async def _ended(gw: GatewayDep, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job's row once it has a result; before: 400, as DeepSeek's server answers and its clients expect."""
    row = await owned_job(gw, caller, job_id)
    if row["status"] not in ENDED_WITH_RESULT or not row.get("result_keys"):
        raise ApiError(
            400,
            ErrorCode.RESULT_NOT_READY,
            f"job {job_id!r} is not completed yet (pagewire: {row['status']})",
            job_id=job_id,
        )
    return row


@router.get(
    "/jobs/{job_id}/download",
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}, **ERRORS},
    response_class=Response,
    tags=["deepseek"],
)
async def download(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> Response:
    """The Markdown result as a file (DeepSeek-OCR's download); 400 while the job is not completed."""
    row = await _ended(gw, caller, job_id)
    body = await gw.client.result(job_id, "md")
    name = download_name(filename_of(row) or "") or job_id
    stem = name.rsplit(".", 1)[0] if "." in name else name  # report.pdf -> report.md
    return Response(body, media_type="text/markdown; charset=utf-8", headers=attachment(f"{stem}.md"))


@router.get(
    "/jobs/{job_id}/metadata",
    response_model=DeepSeekMetadata,
    responses={**ERRORS},
    tags=["deepseek"],
)
async def metadata(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> DeepSeekMetadata:
    """What DeepSeek-OCR's clients read about a finished job; 400 while it is not completed."""
    row = await _ended(gw, caller, job_id)
    begun = row.get("started_at") or row.get("created_at")
    ended = row.get("finished_at")
    seconds = round((ended - begun).total_seconds(), 3) if begun and ended else None
    return DeepSeekMetadata(
        job_id=job_id,
        filename=filename_of(row),
        status=deepseek_status(str(row["status"])),
        pagewire_status=row["status"],
        total_pages=row.get("total_pages"),
        processed_pages=row.get("pages_done") or 0,
        pages_ok=row.get("pages_ok") or 0,
        pages_failed=row.get("pages_failed") or 0,
        created_at=row.get("created_at"),
        started_at=row.get("started_at"),
        processed_at=ended,
        processing_time_seconds=seconds,
        options=row.get("options"),
        prompt=(row.get("metadata") or {}).get("prompt"),
        result_formats=sorted(row.get("result_keys") or {}),
    )
