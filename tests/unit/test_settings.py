"""``PAGEWIRE_*`` environment variables map onto the settings classes."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from schemas.names import Topology
from schemas.settings import Settings, WorkerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``PAGEWIRE_*`` variable from the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("PAGEWIRE_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings()

    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url.get_secret_value() == "postgresql+asyncpg://postgres@127.0.0.1:5432/pagewire"
    assert settings.s3_endpoint_url == "http://127.0.0.1:8333"
    assert settings.s3_bucket == "pagewire"
    assert settings.s3_access_key_id == "pagewire"
    assert settings.s3_secret_access_key.get_secret_value() == "pagewire-secret"
    assert settings.prefix == "pagewire"


def test_env_vars_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_PREFIX", "staging.eu-1")
    monkeypatch.setenv("PAGEWIRE_AMQP_URL", "amqp://u:p@mq.internal:5672/pw")
    monkeypatch.setenv("PAGEWIRE_S3_BUCKET", "pdfs")
    monkeypatch.setenv("PAGEWIRE_DELIVERY_LIMIT", "2")

    settings = Settings()

    assert settings.prefix == "staging.eu-1"
    assert settings.amqp_url.get_secret_value() == "amqp://u:p@mq.internal:5672/pw"
    assert settings.s3_bucket == "pdfs"
    assert settings.topology == Topology(prefix="staging.eu-1", delivery_limit=2)
    assert settings.topology.jobs_queue == "staging.eu-1.jobs"


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_S3_SECRET_ACCESS_KEY", "hunter2")

    assert "hunter2" not in repr(Settings())


def test_allowed_buckets_default_to_the_own_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_S3_BUCKET", "pdfs")

    assert Settings().allowed_buckets == frozenset({"pdfs"})


def test_allowed_buckets_parse_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic-settings reads list fields as JSON.
    monkeypatch.setenv("PAGEWIRE_S3_ALLOWED_BUCKETS", '["pdfs", "scans"]')

    settings = Settings()

    assert settings.s3_allowed_buckets == ["pdfs", "scans"]
    assert settings.allowed_buckets == frozenset({"pdfs", "scans"})


def test_allowed_buckets_reject_a_non_json_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_S3_ALLOWED_BUCKETS", "pdfs,scans")

    with pytest.raises(SettingsError, match="s3_allowed_buckets"):
        Settings()


@pytest.mark.parametrize("prefix", ["", "has space", "a/b", "x" * 65, "émoji"])
def test_invalid_prefix_is_rejected(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("PAGEWIRE_PREFIX", prefix)

    with pytest.raises(ValidationError, match="prefix"):
        Settings()


def test_s3_endpoint_can_be_unset_for_aws() -> None:
    assert Settings(s3_endpoint_url=None).s3_endpoint_url is None


def test_role_settings_read_their_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_PREFIX", "w1")
    monkeypatch.setenv("PAGEWIRE_RETRY_BACKOFF_S", "0.5")
    monkeypatch.setenv("PAGEWIRE_MAX_PAGES", "10")  # a planner setting: the worker ignores it

    worker = WorkerSettings()

    assert worker.prefix == "w1"
    assert worker.retry_backoff_s == 0.5
    assert not hasattr(worker, "max_pages")


def test_unknown_pagewire_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEWIRE_NOT_A_SETTING", "x")

    assert Settings().prefix == "pagewire"
