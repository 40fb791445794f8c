"""The ``pagewire`` command straight on the broker, database and S3, where a job has ended or its id is taken.

One stack of real role processes; the command runs as users run it, in a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.storage import Storage
from schemas.s3keys import source_key
from tests.integration.stack import Stack, pagewire_command, running_stack
from tools.samples import lines, scanned_pdf, text_pdf


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


def pagewire(stack: Stack, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return pagewire_command(*args, env=stack.env, timeout=timeout)


def test_waiting_on_or_watching_a_job_that_has_ended_returns_at_once(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "once.pdf"
    source.write_bytes(text_pdf([lines(["Submitted twice, read once."])]))
    key = f"key-{tmp_path.name}"

    first = pagewire(stack, "submit", str(source), "--idempotency-key", key, "--wait", "--json")
    assert first.returncode == 0, first.stderr
    row = json.loads(first.stdout.splitlines()[-1])
    assert row["status"] == "completed"

    # The same key again: the job it names has ended, so there is no event left to wait for
    again = pagewire(stack, "submit", str(source), "--idempotency-key", key, "--wait", "--json", "--timeout", "30")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["job_id"] == row["job_id"]

    watched = pagewire(stack, "watch", row["job_id"], timeout=30)
    assert watched.returncode == 0, watched.stderr
    assert "done" in watched.stderr

    unknown = pagewire(stack, "watch", "no-such-job", timeout=30)
    assert unknown.returncode == 4 and "job_not_found" in unknown.stderr
    no_result = pagewire(stack, "result", "no-such-job")
    assert no_result.returncode == 4 and "job_not_found" in no_result.stderr


def test_a_job_id_in_use_is_refused_and_its_source_is_left_alone(stack: Stack, tmp_path: Path) -> None:
    first, second = tmp_path / "first.pdf", tmp_path / "second.pdf"
    first.write_bytes(text_pdf([lines(["The first file."])]))
    second.write_bytes(text_pdf([lines(["A second file under the same id."])]))
    job_id = f"cli-{tmp_path.name}"[:64]

    done = pagewire(stack, "submit", str(first), "--job-id", job_id, "--wait")
    assert done.returncode == 0, done.stderr

    taken = pagewire(stack, "submit", str(second), "--job-id", job_id, "--wait", "--timeout", "30")
    assert taken.returncode == 2
    assert taken.stderr.strip() == f"pagewire: job {job_id!r} exists already: choose another job id"
    stored = Storage(stack.settings).get_bytes(stack.settings.s3_bucket, source_key(job_id))
    assert hashlib.sha256(stored).digest() == hashlib.sha256(first.read_bytes()).digest()


def test_wait_that_runs_out_names_the_job_and_says_why(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "slow.pdf"
    source.write_bytes(scanned_pdf([lines(["A scanned page takes seconds to read."])] * 3))

    waited = pagewire(stack, "submit", str(source), "--wait", "--json", "--timeout", "0.2")

    assert waited.returncode == 4, waited.stderr
    row = json.loads(waited.stdout.splitlines()[-1])
    assert row["job_id"] and row["status"] != "completed"
    assert waited.stderr.strip().splitlines()[-1] == "pagewire: gave up waiting after 0.2 s; the jobs go on"


def test_retry_of_a_job_that_failed_as_a_whole_says_there_is_nothing_to_read_again(
    stack: Stack, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a PDF at all\n")
    failed = pagewire(stack, "submit", str(notes), "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    row = json.loads(failed.stdout.splitlines()[-1])
    assert (row["status"], row["error_code"]) == ("failed", "not_a_pdf")

    retried = pagewire(stack, "retry", row["job_id"])
    assert retried.returncode == 1
    assert "failed before any page was read (not_a_pdf): nothing to retry" in retried.stderr
