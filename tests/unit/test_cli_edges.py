"""What the ``pagewire`` command says to input it refuses: one line, and the exit code README gives."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from pagewire.cli import main
from producer.output import EXIT_JOB_FAILED, EXIT_OF_CODE, EXIT_UNREACHABLE, EXIT_USAGE
from schemas.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["jobs", "--since", "bogus"], "not a duration: 'bogus'"),
        (["jobs", "--limit", "-3"], "must be 1 or more, not -3"),
        (["gc", "--max-age", "soon"], "not a duration: 'soon'"),
        (["gc", "--max-jobs", "-1", "--dry-run"], "must be 0 or more, not -1"),
        (["gc", "--max-bytes", "lots"], "not a whole number: 'lots'"),
        (["gc", "--every", "0"], "must be above 0, not 0"),
        (["http", "--port", "99999"], "must be 0 to 65535, not 99999"),
        (["submit", "a.pdf", "--deadline", "-1"], "must be above 0, not -1"),
        (["submit", "a.pdf", "--wait", "--timeout", "nan"], "must be above 0, not nan"),
    ],
)
def test_a_bad_number_or_duration_is_a_usage_error(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == EXIT_USAGE
    assert said in capsys.readouterr().err


def test_a_file_that_cannot_be_read_queues_nothing_and_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No service is reachable at these addresses: the command must refuse before it tries any.
    good = tmp_path / "good.pdf"
    good.write_bytes(b"%PDF-1.4\n")
    missing = tmp_path / "missing.pdf"
    variables = ["--api", "http://127.0.0.1:1"]
    assert main([*variables, "submit", str(good), str(missing), "--wait"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"pagewire: {missing}: No such file or directory"
    assert main([*variables, "submit", str(tmp_path)]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"pagewire: {tmp_path}: Is a directory"


def test_job_id_with_several_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [tmp_path / "a.pdf", tmp_path / "b.pdf"]
    for file in files:
        file.write_bytes(b"%PDF-1.4\n")
    assert main(["--api", "http://127.0.0.1:1", "submit", *map(str, files), "--job-id", "two"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "pagewire: --job-id names one job: give it one file"


def test_settings_that_do_not_parse_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PAGEWIRE_API_KEYS", "not json")
    assert main(["http", "--port", "0"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("pagewire: settings: ") and "api_keys" in err and "\n" not in err


def test_error_codes_map_to_the_exit_codes_readme_gives() -> None:
    assert EXIT_OF_CODE["storage_unavailable"] == EXIT_UNREACHABLE
    assert EXIT_OF_CODE.get(ErrorCode.NOT_A_PDF, EXIT_JOB_FAILED) == EXIT_JOB_FAILED
    assert set(EXIT_OF_CODE) - {"job_exists"} <= set(ErrorCode)


def test_every_error_code_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs" / "errors.md").read_text(), re.MULTILINE))
    assert set(ErrorCode) <= documented, sorted(set(ErrorCode) - documented)


def test_descriptions_keep_their_capitals(capsys: pytest.CaptureFixture[str]) -> None:
    for command, words in (["http", "HTTP API"], ["recorder", "PostgreSQL"]):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert words in capsys.readouterr().out, command


class _Rows:
    """A client whose jobs have ended with the given rows."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    async def final_status(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, **self.row}


@pytest.mark.parametrize(
    ("row", "line"),
    [
        (
            {
                "status": "failed",
                "total_pages": None,
                "pages_ok": 0,
                "error_code": "truncated_pdf",
                "error_message": "cut",
            },
            "j1 failed truncated_pdf: cut",
        ),
        (
            {
                "status": "completed_with_errors",
                "total_pages": 2,
                "pages_ok": 1,
                "error_code": "page_too_large",
                "error_message": None,
            },
            "j1 completed_with_errors 1/2 pages; page_too_large",
        ),
        (
            {"status": "completed", "total_pages": 3, "pages_ok": 3, "error_code": None, "error_message": None},
            "j1 completed 3/3 pages",
        ),
    ],
)
async def test_the_last_line_of_wait_says_what_is_known_and_no_none(
    row: dict[str, Any], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from producer.cli import _report
    from schemas.messages import JobRequest, Source

    request = JobRequest(job_id="j1", source=Source(bucket="pagewire", key="jobs/j1/source.pdf"))
    final = "JobCompleted" if row["status"].startswith("completed") else "JobFailed"
    await _report(_Rows(row), argparse.Namespace(json=False), [request], {"j1": final})  # type: ignore[arg-type]
    assert capsys.readouterr().out.strip() == line
