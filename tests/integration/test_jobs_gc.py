"""``pagewire jobs`` and ``pagewire gc`` on the real services.

Retention deletes across the whole status table, so this module runs on a
database of its own: other modules' jobs are never expired by it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters import database
from adapters.database import upgrade
from adapters.storage import Storage
from producer import jobs as jobs_cli
from producer.api import Client
from producer.jobs import RetentionSettings, collect_garbage
from schemas.messages import Engine, JobOptions, JobRequest, Source
from tests.integration.stack import Stack
from tools import devstack
from tools.samples import lines, text_pdf

pytestmark = pytest.mark.integration

TEXT = JobOptions(engine=Engine.TEXT)


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database_url = (
        make_url(services.database_url)
        .set(database=f"pagewire_gc_{secrets.token_hex(4)}")
        .render_as_string(hide_password=False)
    )
    database.ensure_database(database_url)
    upgrade(database_url)
    private = replace(services, database_url=database_url)
    stack = Stack(private.env(f"t{secrets.token_hex(6)}"), tmp_path_factory.mktemp("roles"))
    try:
        for role in ("planner", "worker", "recorder"):
            stack.start(role)
        stack.wait_ready(timeout=90)
        yield stack
    finally:
        stack.stop_all()
        devstack.delete_topology(services.amqp_url, stack.topology)
        database.drop_database(database_url)


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.env["PAGEWIRE_DATABASE_URL"])
    yield engine
    await engine.dispose()


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The stack's variables in this process's environment, as the commands read them."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    return stack.env


def pdf(label: str) -> bytes:
    return text_pdf([lines([f"Retention test document {label}.", "Second line."])])


async def run_jobs(stack: Stack, count: int, *, spacing_s: float = 0.0) -> list[str]:
    """Submit ``count`` small PDFs one after the other and wait until each has ended."""
    ids = []
    async with Client(stack.settings) as client:
        for n in range(count):
            request = await client.submit(pdf(f"{secrets.token_hex(3)}-{n}"), options=TEXT)
            row = await client.final_status(request.job_id, wait_s=60)
            assert row["status"] == "completed", row
            ids.append(request.job_id)
            await asyncio.sleep(spacing_s)
    return ids


async def backdate(db: AsyncEngine, job_id: str, seconds: float) -> None:
    """Make a job look as if it was created and finished ``seconds`` earlier."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE jobs SET created_at = created_at - make_interval(secs => :s),"
                " started_at = started_at - make_interval(secs => :s),"
                " finished_at = finished_at - make_interval(secs => :s) WHERE job_id = :j"
            ),
            {"s": seconds, "j": job_id},
        )


async def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="pagewire")
    jobs_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    capsys.readouterr()
    code = await args.func(args)
    return code, capsys.readouterr().out


def exists(stack: Stack, bucket: str, key: str) -> bool:
    return Storage(stack.settings).client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


async def row(db: AsyncEngine, job_id: str) -> dict[str, Any]:
    async with db.connect() as conn:
        found = await conn.execute(text("SELECT * FROM jobs WHERE job_id = :j"), {"j": job_id})
        pages = await conn.execute(text("SELECT count(*) FROM pages WHERE job_id = :j"), {"j": job_id})
        return dict(found.mappings().one()) | {"page_rows": pages.scalar_one()}


async def expire_everything(db: AsyncEngine) -> None:
    """Tombstone every job: each test starts from a table with nothing left to expire."""
    async with db.begin() as conn:
        await conn.execute(text("UPDATE jobs SET expired_at = now() WHERE expired_at IS NULL"))


async def test_jobs_lists_recent_jobs_with_filters(
    stack: Stack, db: AsyncEngine, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three finished jobs, one of them created two hours ago, and one that failed
    done = await run_jobs(stack, 3)
    await backdate(db, done[0], 7200)
    async with Client(stack.settings) as client:
        failed = await client.submit(b"this is not a PDF", options=TEXT)
        assert (await client.final_status(failed.job_id, wait_s=30))["status"] == "failed"

    # When they are listed as JSON, newest first
    code, out = await run_command(["jobs", "--json", "--limit", "50"], capsys)
    listed = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    ids = [r["job_id"] for r in listed]
    assert ids.index(failed.job_id) < ids.index(done[2]) < ids.index(done[1]) < ids.index(done[0])

    # Then the filters narrow the list
    _, out = await run_command(["jobs", "--json", "--status", "failed", "--limit", "50"], capsys)
    failures = [json.loads(line) for line in out.splitlines()]
    assert failed.job_id in {r["job_id"] for r in failures}
    assert {r["status"] for r in failures} == {"failed"} and failures[0]["error_code"]
    _, out = await run_command(["jobs", "--json", "--since", "1h", "--limit", "50"], capsys)
    recent = {json.loads(line)["job_id"] for line in out.splitlines()}
    assert set(done[1:]) <= recent and done[0] not in recent
    _, out = await run_command(["jobs", "--json", "--limit", "2"], capsys)
    assert len(out.splitlines()) == 2
    # and the table for people has a header and a row per job
    _, out = await run_command(["jobs", "--status", "completed,failed", "--since", "1h"], capsys)
    assert out.splitlines()[0].split()[:3] == ["JOB", "STATUS", "PAGES"]
    assert any(failed.job_id in line and "failed" in line for line in out.splitlines())
    # and an unknown status is a usage error
    code, _ = await run_command(["jobs", "--status", "finished"], capsys)
    assert code == 2


async def test_gc_expires_by_age_and_leaves_a_tombstone(
    stack: Stack, db: AsyncEngine, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await expire_everything(db)
    # Given two finished jobs, one finished two days ago
    old, new = await run_jobs(stack, 2)
    await backdate(db, old, 2 * 86400)
    before = await row(db, old)
    bucket, keys = before["result_bucket"], before["result_keys"]
    assert exists(stack, bucket, keys["md"]) and exists(stack, bucket, f"jobs/{old}/source.pdf")

    # When a dry run is asked for, it names the old job and deletes nothing
    code, out = await run_command(["gc", "--max-age", "1d", "--dry-run", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["dry_run"] is True
    assert [(e["job_id"], e["reason"], e["objects"]) for e in report["expired"]] == [(old, "age", 3)]
    assert exists(stack, bucket, keys["md"])

    # When gc runs with a one-day limit
    code, out = await run_command(["gc", "--max-age", "1d", "--json"], capsys)
    assert json.loads(out)["freed_bytes"] > 0

    # Then the old job's source and results are gone, its row stays as a tombstone, the new job is untouched
    after = await row(db, old)
    assert after["expired_at"] is not None and after["status"] == "completed" and after["pages_ok"] == 1
    assert after["page_rows"] == 0
    assert not exists(stack, bucket, keys["md"]) and not exists(stack, bucket, keys["json"])
    assert not exists(stack, bucket, f"jobs/{old}/source.pdf")
    assert (await row(db, new))["expired_at"] is None and exists(stack, bucket, f"jobs/{new}/source.pdf")
    # and the listing shows it as expired
    _, out = await run_command(["jobs", "--json", "--status", "expired"], capsys)
    assert old in {json.loads(line)["job_id"] for line in out.splitlines()}
    # and a second run has nothing more to do
    _, out = await run_command(["gc", "--max-age", "1d", "--json"], capsys)
    assert json.loads(out)["expired"] == []


async def test_gc_keeps_the_newest_by_count_and_by_size(stack: Stack, db: AsyncEngine, env: dict[str, str]) -> None:
    await expire_everything(db)
    # Given four finished jobs, finished one after the other
    ids = await run_jobs(stack, 4, spacing_s=0.05)
    settings = RetentionSettings.from_variables(env)

    # When at most three may stay, the oldest goes
    report = await collect_garbage(settings.model_copy(update={"retention_max_jobs": 3}), db=db)
    assert [(c.job_id, c.reason) for c in report.expired] == [(ids[0], "count")]
    assert report.kept_jobs == 3

    # When the kept objects may take only a little more than the newest job's, only the newest stays
    newest = await collect_garbage(settings.model_copy(update={"retention_max_jobs": 1}), db=db, dry_run=True)
    assert {c.job_id for c in newest.expired} == set(ids[1:3])  # a dry run: nothing changed
    budget = newest.kept_bytes + 1
    report = await collect_garbage(settings.model_copy(update={"retention_max_bytes": budget}), db=db)
    assert sorted((c.job_id, c.reason) for c in report.expired) == sorted((j, "size") for j in ids[1:3])
    assert report.kept_jobs == 1 and report.kept_bytes <= budget
    for job_id in ids[:3]:
        assert (await row(db, job_id))["expired_at"] is not None
    assert (await row(db, ids[3]))["expired_at"] is None


async def test_gc_never_deletes_a_source_pagewire_did_not_write_nor_touches_running_jobs(
    stack: Stack, db: AsyncEngine, env: dict[str, str]
) -> None:
    await expire_everything(db)
    # Given a job whose PDF your own service put at its own key
    storage = Storage(stack.settings)
    bucket = stack.settings.s3_bucket
    key = f"external/{secrets.token_hex(4)}/contract.pdf"
    etag = storage.put_bytes(bucket, key, pdf("external"), "application/pdf")
    async with Client(stack.settings) as client:
        request = JobRequest(source=Source(bucket=bucket, key=key, etag=etag), options=TEXT)
        await client.publish(request)
        assert (await client.final_status(request.job_id, wait_s=60))["status"] == "completed"
    # and a job still running since long ago
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO jobs (job_id, status, created_at, updated_at, started_at)"
                " VALUES (:j, 'running', now() - interval '9 days', now(), now() - interval '9 days')"
            ),
            {"j": f"running-{secrets.token_hex(4)}"},
        )
    await backdate(db, request.job_id, 3 * 86400)

    # When gc expires everything older than a day
    settings = RetentionSettings.from_variables(env | {"PAGEWIRE_RETENTION_MAX_AGE": "1d"})
    report = await collect_garbage(settings, db=db)

    # Then the job's results went, its source stayed, and the running job was not touched
    assert [c.job_id for c in report.expired] == [request.job_id]
    assert len(report.expired[0].objects) == 2  # the two result files, not the source
    assert exists(stack, bucket, key)
    async with db.connect() as conn:
        running = await conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'running' AND expired_at IS NULL"))
        assert running.scalar_one() == 1
