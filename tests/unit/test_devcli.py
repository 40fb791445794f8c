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
