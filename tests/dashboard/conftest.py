"""Browser tests: Playwright drives Debian's Chromium (``apt-get install chromium``).

The screenshots the user guide shows (``docs/images/``) are taken on every run but
written there only when ``NEXUS_STORE_SCREENSHOTS=1`` (``scripts/screenshots``); a plain
test run writes them to a temporary folder and leaves the tracked images alone.
``.ci/run`` sets ``NEXUS_STORE_REQUIRE_BROWSER=1``: there a missing Chromium fails the
tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _chromium() -> str:
    """The system's Chromium, or skip (fail under ``.ci/run``)."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("NEXUS_STORE_REQUIRE_BROWSER") == "1":
            pytest.fail("NEXUS_STORE_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return found


@pytest.fixture
def page() -> Iterator[Page]:
    """A page in a headless Chromium that lives for one test.

    This replaces pytest-playwright's ``page``: that one hangs off a session-wide
    Playwright whose event loop stays the thread's running loop until the session ends,
    and every ``anyio.run`` of the tests collected after this folder would then fail
    ("Cannot run the event loop while another loop is running"). Stopping Playwright
    after each test clears it.
    """
    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """The folder screenshots go to: the guide's images only when asked for."""
    if os.environ.get("NEXUS_STORE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
