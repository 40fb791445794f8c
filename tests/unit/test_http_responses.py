"""What the gateway's answers carry, without a server: the code of each framework error."""

from __future__ import annotations

from producer.web.errors import framework_error


def test_every_framework_status_gets_a_code_that_fits() -> None:
    # A body Starlette cannot parse (a multipart without boundary, too many files) is malformed, as JSON is.
    assert framework_error(400) == (422, "malformed_message")
    assert framework_error(404) == (404, "not_found")
    assert framework_error(405) == (405, "method_not_allowed")
    for status in range(400, 500):
        if status != 404:
            assert framework_error(status)[1] != "not_found", status
    assert framework_error(500) == (500, "internal_error")
