"""The live status page in headless Chromium against the running stack: upload, watch the bar, open the result.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright's Python
API with ``executable_path``, so nothing is downloaded; without either the
test is skipped.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.http_gateway import Gateway, running_gateway, running_stack
from tests.integration.stack import Stack
from tools.samples import lines, text_pdf

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = ["The status page reads page one.", "And page two.", "And page three, the last."]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None, reason="no /usr/bin/chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def gateway(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    stack: Stack
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack, running_gateway(stack) as gateway:
        yield gateway


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_upload_through_the_page_watch_the_bar_reach_100_and_open_the_result(
    gateway: Gateway, browser: Any
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))

    # Given the status page, which asks for the API key the gateway wants
    await page.goto(gateway.url)
    await page.locator("#key").wait_for(state="visible", timeout=10_000)
    await page.fill("#key-input", gateway.api_key)
    await page.click("#key-save")

    # When a three-page PDF is uploaded through its form
    await page.set_input_files(
        "#file",
        files=[
            {"name": "page-test.pdf", "mimeType": "application/pdf", "buffer": text_pdf([lines([t]) for t in PAGES])}
        ],
    )
    await page.select_option("select[name=engine]", "text")
    await page.click("button[type=submit]")

    # Then its row appears, and the event stream takes its bar to 100 % and its status to completed
    row = page.locator("tbody tr", has=page.locator("td[data-col=file]", has_text="page-test.pdf"))
    await row.wait_for(timeout=10_000)
    await row.locator(".bar[data-percent='100']").wait_for(timeout=60_000)
    await row.locator("td[data-col=status]", has_text="completed").wait_for(timeout=10_000)
    assert "100%" in await row.locator(".bar span").inner_text()

    # and its pages show one square each, all completed
    await row.locator("td[data-col=job] button").click()
    await row.locator(".pages span.completed").nth(2).wait_for(timeout=10_000)
    assert await row.locator(".pages span").count() == 3

    # and the result link opens the text
    async with context.expect_page() as opened:
        await row.locator("a.result-md").click()
    result = await opened.value
    # The page fetches the result with its key in a header, then shows it from memory (a blob: URL).
    await result.wait_for_url(re.compile(r"^blob:"), timeout=10_000)
    await result.wait_for_load_state()
    text = await result.locator("body").inner_text()
    assert all(line in text for line in PAGES)
    assert script_errors == []
    # and the key never travelled in a URL: the stream opened with a stream token
    assert urls and not [u for u in urls if gateway.api_key in u or "api_key=" in u]
    assert any("/events?token=" in u for u in urls)
    await context.close()
