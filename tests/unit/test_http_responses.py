"""What the gateway's answers carry, without a server: the code of each framework error, download names."""

from __future__ import annotations

import pytest

from producer.web.errors import framework_error
from producer.web.views import attachment


def test_every_framework_status_gets_a_code_that_fits() -> None:
    # A body Starlette cannot parse (a multipart without boundary, too many files) is malformed, as JSON is.
    assert framework_error(400) == (422, "malformed_message")
    assert framework_error(404) == (404, "not_found")
    assert framework_error(405) == (405, "method_not_allowed")
    for status in range(400, 500):
        if status != 404:
            assert framework_error(status)[1] != "not_found", status
    assert framework_error(500) == (500, "internal_error")


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("report.md", 'attachment; filename="report.md"'),
        ("../../etc/x.md", 'attachment; filename="x.md"'),
        ("..\\..\\windows\\x.md", 'attachment; filename="x.md"'),
        ("a\x00b\x1bc\u202egpj.md", 'attachment; filename="abcgpj.md"'),
        ("..", 'attachment; filename="download"'),
        ("résumé ñ.md", "attachment; filename=\"resume n.md\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%B1.md"),
        ("報告.md", "attachment; filename=\"__.md\"; filename*=UTF-8''%E5%A0%B1%E5%91%8A.md"),
        ('say "hi" 100%.md', "attachment; filename=\"say _hi_ 100_.md\"; filename*=UTF-8''say%20%22hi%22%20100%25.md"),
    ],
)
def test_a_download_is_named_by_its_base_name_in_ascii_and_utf8(name: str, header: str) -> None:
    value = attachment(name)["Content-Disposition"]

    assert value == header
    value.encode("ascii")  # what any HTTP client can read
