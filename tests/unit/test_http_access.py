"""The gateway's security core without a server: keys and roles, who sees which job, stream tokens, slots."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from producer.web.access import (
    ALL_JOBS,
    ApiKey,
    Caller,
    Keyring,
    Limits,
    Role,
    Slots,
    StreamTokens,
    TokenError,
    open_caller,
)
from producer.web.command import RedactQuery
from producer.web.events import EventHub, Inbox
from producer.web.gateway import HttpSettings, NoKeysError, check_auth
from schemas.messages import JobCancelled

KEY_A = "a" * 24
KEY_OPS = "o" * 24


def settings(monkeypatch: pytest.MonkeyPatch, keys: object, **variables: str) -> HttpSettings:
    monkeypatch.setenv("PAGEWIRE_API_KEYS", json.dumps(keys))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return HttpSettings()


# --- keys ------------------------------------------------------------------------


def test_keys_come_as_objects_with_roles_or_as_plain_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = "p" * 20
    s = settings(monkeypatch, [plain, {"name": "ops", "key": KEY_OPS, "role": "admin"}])

    first, ops = s.api_keys
    assert first.role == Role.SUBMIT and first.name.startswith("key-") and plain not in first.name
    assert first.name == ApiKey.from_plain(plain).name  # the same name on every start
    assert (ops.name, ops.role) == ("ops", Role.ADMIN)


@pytest.mark.parametrize(
    "keys",
    [
        [{"name": "a", "key": KEY_A}, {"name": "a", "key": KEY_OPS}],  # one name twice
        [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_A}],  # one key twice
        [{"name": "a", "key": "short"}],
        [{"name": "a b", "key": KEY_A}],
        [{"name": "a", "key": KEY_A, "role": "root"}],
    ],
)
def test_bad_key_lists_are_refused(monkeypatch: pytest.MonkeyPatch, keys: object) -> None:
    with pytest.raises(ValidationError):
        settings(monkeypatch, keys)


def test_without_keys_the_gateway_runs_only_when_told_to(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NoKeysError, match="PAGEWIRE_HTTP_NO_AUTH=1"):
        check_auth(settings(monkeypatch, []))
    assert check_auth(settings(monkeypatch, [], PAGEWIRE_HTTP_NO_AUTH="1")) is True
    # Keys win over a leftover no-auth: the gateway asks for them.
    assert check_auth(settings(monkeypatch, [KEY_A], PAGEWIRE_HTTP_NO_AUTH="1")) is False


def test_a_keyring_names_the_caller_with_its_limits() -> None:
    keys = [
        ApiKey(name="team-a", key=KEY_A),
        ApiKey(name="ops", key=KEY_OPS, role=Role.ADMIN),
        ApiKey(name="batch", key="b" * 24, max_priority=1, max_streams=2),
    ]
    ring = Keyring(keys, Limits(max_priority=4, max_streams=16, max_uploads=8))

    team_a, ops, batch = ring.identify(KEY_A), ring.identify(KEY_OPS), ring.identify("b" * 24)
    assert ring.identify("x" * 24) is None and ring.identify("") is None
    assert team_a == Caller("team-a", Role.SUBMIT, Limits(4, 16, 8))
    assert ops is not None and ops.admin and ops.limits.max_priority == 9
    assert batch is not None and batch.limits == Limits(1, 2, 8)
    assert ring.named("ops") == ops and ring.named("gone") is None


def test_a_gateway_run_open_takes_any_priority_and_keeps_its_other_limits() -> None:
    caller = open_caller(Limits(max_priority=4, max_streams=16, max_uploads=8))

    assert caller.admin and caller.limits == Limits(9, 16, 8)


def test_a_submit_key_sees_its_own_jobs_and_an_admin_every_job() -> None:
    team_a = Caller("team-a", Role.SUBMIT)
    ops = Caller("ops", Role.ADMIN)

    assert team_a.sees("team-a") and not team_a.sees("team-b")
    assert not team_a.sees(None)  # a job of no key (messages, the drop folder)
    assert ops.sees("team-a") and ops.sees(None)


# --- stream tokens ------------------------------------------------------------------------


def test_a_stream_token_names_its_key_for_its_stream_until_it_expires() -> None:
    tokens = StreamTokens(b"s" * 32, ttl_s=60)
    token, expires = tokens.issue("team-a", "job-1", now=1000.0)

    assert expires == 1060
    assert tokens.verify(token, "job-1", now=1059.0) == "team-a"
    with pytest.raises(TokenError, match="another stream"):
        tokens.verify(token, "job-2", now=1001.0)
    with pytest.raises(TokenError, match="another stream"):
        tokens.verify(token, ALL_JOBS, now=1001.0)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, "job-1", now=1061.0)


@pytest.mark.parametrize("mangle", ["forged", "other-secret", "garbage", "empty"])
def test_a_token_not_made_here_opens_nothing(mangle: str) -> None:
    tokens = StreamTokens(b"s" * 32, ttl_s=60)
    token, _ = tokens.issue("team-a", "job-1")
    payload, mac = token.split(".")
    given = {
        # The payload rewritten to name another key, the mac kept: the mac no longer fits.
        "forged": payload.replace(payload[:4], "eyJz") + "x." + mac,
        "other-secret": StreamTokens(b"t" * 32, ttl_s=60).issue("team-a", "job-1")[0],
        "garbage": "not a token!",
        "empty": "",
    }[mangle]
    with pytest.raises(TokenError):
        tokens.verify(given, "job-1")


def test_without_a_secret_each_process_signs_its_own() -> None:
    one, two = StreamTokens(None, 60), StreamTokens(None, 60)
    token, _ = one.issue("team-a", "job-1")
    assert one.verify(token, "job-1") == "team-a"
    with pytest.raises(TokenError):
        two.verify(token, "job-1")


def test_the_access_log_loses_tokens_and_keys_in_urls() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', ("1.2.3.4:5", "GET", "", "1.1", 200), None
    )
    record.args = ("1.2.3.4:5", "GET", "/jobs/j/events?text=false&token=abc.def&api_key=k", "1.1", 200)

    assert RedactQuery().filter(record)
    assert record.getMessage() == (
        '1.2.3.4:5 - "GET /jobs/j/events?text=false&token=REDACTED&api_key=REDACTED HTTP/1.1" 200'
    )


# --- slots and inboxes ------------------------------------------------------------------------


def test_slots_count_per_key_and_come_back_once() -> None:
    slots = Slots()
    first = slots.take("team-a", 2)
    second = slots.take("team-a", 2)
    assert first is not None and second is not None
    assert slots.take("team-a", 2) is None and slots.take("team-b", 2) is not None

    first.release()
    first.release()  # twice: still one slot back
    assert slots.held("team-a") == 1
    assert slots.take("team-a", None) is not None  # no limit


async def test_a_stream_that_stops_reading_is_dropped_and_its_events_let_go() -> None:
    hub = EventHub(client=None)  # type: ignore[arg-type]  # dispatch needs no broker
    slow = hub.open_inbox("job-1")
    slow.queue = asyncio.Queue(3)  # a small inbox, for the test
    reader = hub.open_inbox("job-1")

    for n in range(5):
        hub._dispatch(JobCancelled(job_id="job-1", reason=str(n)))
        if not reader.queue.empty():
            reader.queue.get_nowait()  # this one reads

    assert slow.overflowed and slow.queue.empty()
    assert slow not in hub._inboxes.get("job-1", set()) and reader in hub._inboxes["job-1"]
    assert not Inbox("job-2").overflowed


# --- a quiet stream's catch-up ------------------------------------------------------------------------


async def test_a_quiet_stream_reads_the_row_and_only_the_pages_it_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    from producer.web import events, jobs

    table = {1: "completed", 2: "completed", 3: "completed"}
    reads: list[tuple[str, object]] = []

    async def get_job(db: object, job_id: str) -> dict[str, object]:
        reads.append(("row", job_id))
        done = sum(1 for status in table.values() if status == "completed")
        return {"job_id": job_id, "status": "running", "total_pages": 3, "pages_ok": done, "pages_failed": 0}

    async def get_pages(
        db: object, job_id: str, *, with_text: bool = False, page_nos: list[int] | None = None
    ) -> list[dict[str, object]]:
        reads.append(("pages+text" if with_text else "pages", page_nos))
        rows: list[dict[str, object]] = [
            {"page_no": n, "status": s, "text": f"page {n}" if with_text else None} for n, s in table.items()
        ]
        return [r for r in rows if page_nos is None or r["page_no"] in page_nos]

    monkeypatch.setattr(jobs, "get_job", get_job)
    monkeypatch.setattr(jobs, "get_pages", get_pages)
    # Given a follower that has sent pages 1 and 3 (live), and missed page 2
    follower = events.JobFollower("job-1")
    follower._start(3, None, None)
    follower._page(1, "completed", {})
    follower._page(3, "completed", {})

    # When the stream has been quiet
    items = await events._catch_up(None, follower)  # type: ignore[arg-type]

    # Then the row is read, page statuses once, and the text of page 2 only
    assert reads == [("row", "job-1"), ("pages", None), ("pages+text", [2])]
    assert [(name, data["page_no"], data["text"]) for name, data in items] == [("page", 2, "page 2")]

    # and once it has seen everything, a quiet spell costs the row alone
    reads.clear()
    assert await events._catch_up(None, follower) == []  # type: ignore[arg-type]
    assert reads == [("row", "job-1")]
