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
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system's Chromium (Playwright cannot download browsers here)."""
    if not shutil.which("chromium"):
        if os.environ.get("NEXUS_STORE_REQUIRE_BROWSER") == "1":
            pytest.fail("NEXUS_STORE_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """The folder screenshots go to: the guide's images only when asked for."""
    if os.environ.get("NEXUS_STORE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
