"""A worker with a device that reads batches (the simulated one), against the real broker, database and S3."""

from __future__ import annotations

from typing import Any

from schemas.messages import Engine, JobOptions, PageCompleted
from tests.integration.stack import MakeStack, run_job
from tools.samples import concat, lines, scanned_pdf, text_pdf

BATCH = 4


async def test_a_batched_worker_reads_every_page_once_and_fails_a_bad_one_alone(make_stack: MakeStack) -> None:
    # Given a worker whose device reads batches of 4, the pages rendered ahead by 2 processes
    stack = make_stack(
        role_env={
            "worker": {
                "PAGEWIRE_ENGINE": "sim",
                "PAGEWIRE_GPU_BATCH_PAGES": str(BATCH),
                "PAGEWIRE_RENDER_PROCESSES": "2",
                "PAGEWIRE_SIM_BATCH_MS": "20",
                "PAGEWIRE_SIM_PAGE_MS": "5",
                "PAGEWIRE_MAX_MEGAPIXELS": "20",
            },
            "planner": {"PAGEWIRE_OCR_PAGES_PER_TASK": str(2 * BATCH)},
        }
    )
    # and 9 scanned pages, then one too large to render
    pdf = concat(
        scanned_pdf([lines([f"scanned page {n}"]) for n in range(1, 10)], dpi=72),
        text_pdf([lines(["a poster"])], size=(6000.0, 6000.0)),
    )

    # When the job asks for the device's engine
    run = await run_job(stack, pdf, options=JobOptions(engine=Engine.SIM, dpi=72))

    # Then every page but the poster was read by the device, each once, and the poster failed alone
    completed: dict[int, Any] = {e.page_no: e for e in run.events if isinstance(e, PageCompleted)}
    assert sorted(completed) == list(range(1, 10))
    assert all(e.engine == Engine.SIM and e.text.startswith("simulated page") for e in completed.values())
    failed = [e for e in run.of_type("PageFailed")]
    assert [(e.page_no, e.error_code) for e in failed] == [(10, "page_too_large")]  # type: ignore[attr-defined]
    assert (run.status["status"], run.status["pages_ok"], run.status["pages_failed"]) == (
        "completed_with_errors",
        9,
        1,
    )


async def test_an_auto_job_reads_text_pages_from_their_layer_and_batches_the_scans(make_stack: MakeStack) -> None:
    stack = make_stack(
        role_env={
            "worker": {
                "PAGEWIRE_ENGINE": "sim",
                "PAGEWIRE_GPU_BATCH_PAGES": str(BATCH),
                "PAGEWIRE_SIM_BATCH_MS": "10",
                "PAGEWIRE_SIM_PAGE_MS": "2",
            }
        }
    )
    born = text_pdf([lines([f"born-digital page {n} with its own text layer"]) for n in range(1, 4)])
    scans = scanned_pdf([lines([f"scanned page {n}"]) for n in range(1, 7)], dpi=72)

    run = await run_job(stack, concat(born, scans), options=JobOptions(engine=Engine.AUTO, dpi=72))

    completed = {e.page_no: e for e in run.events if isinstance(e, PageCompleted)}
    assert sorted(completed) == list(range(1, 10))
    assert {completed[n].engine for n in (1, 2, 3)} == {Engine.TEXT}
    assert {completed[n].engine for n in range(4, 10)} == {Engine.SIM}
    assert run.status["status"] == "completed"
