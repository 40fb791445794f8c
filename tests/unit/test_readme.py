"""The README documents the contract: every setting and every command."""

from __future__ import annotations

from pathlib import Path

from pagewire.cli import build_parser
from producer.dropfolder import DropFolderSettings
from producer.jobs import RetentionSettings
from producer.web.gateway import HttpSettings
from schemas.settings import PlannerSettings, RecorderSettings, Settings, WorkerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for cls in (
        Settings,
        PlannerSettings,
        WorkerSettings,
        RecorderSettings,
        DropFolderSettings,
        RetentionSettings,
        HttpSettings,
    ):
        for name, field in cls.model_fields.items():
            variable = str(field.validation_alias or f"PAGEWIRE_{name.upper()}")
            assert f"`{variable}`" in README, f"{variable} is not in the README's configuration table"


def test_every_command_is_documented() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"pagewire {command}" in README, f"pagewire {command} is not in the README"


def test_the_two_commands_lead() -> None:
    assert README.index("make demo") < README.index("## How it works")
    assert README.index("make test") < README.index("## How it works")
