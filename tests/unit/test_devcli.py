"""``pagewire dev`` and ``pagewire demo`` when a part of the local stack cannot start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pagewire.cli import main
from producer.output import EXIT_UNREACHABLE
from tools import devstack

REASON = "recorder exited with 2 during start; .dev/logs/recorder.log: the metrics port 127.0.0.1:9103 is in use"


@pytest.mark.parametrize("command", [["demo"], ["dev", "up"]])
def test_a_part_that_cannot_start_is_one_line_and_the_unreachable_exit(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise devstack.DevStackError(REASON)

    monkeypatch.setattr(devstack, "dev_up", refuse)
    assert main([*command, "--state-dir", str(tmp_path)]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"pagewire: the local stack: {REASON}"]


def test_dev_env_points_the_aws_tools_at_the_stacks_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "PAGEWIRE_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
        "PAGEWIRE_S3_ACCESS_KEY_ID": "dev",
        "PAGEWIRE_S3_SECRET_ACCESS_KEY": "dev secret",
        "PAGEWIRE_S3_REGION": "us-east-1",
    }
    monkeypatch.setattr(devstack, "dev_env", lambda *_, **__: env)
    assert main(["dev", "env", "--state-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:8333" in printed
    assert "export AWS_SECRET_ACCESS_KEY='dev secret'" in printed
    assert "export PAGEWIRE_S3_ACCESS_KEY_ID=dev" in printed and "export AWS_ACCESS_KEY_ID=dev" in printed


def test_dev_env_on_aws_s3_sets_no_aws_variables() -> None:
    from tools.devcli import aws_env

    assert aws_env({"PAGEWIRE_S3_BUCKET": "b"}) == {}
