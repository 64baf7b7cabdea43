"""Browser tests: Playwright drives Debian's Chromium (``apt-get install chromium``)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system's Chromium (Playwright cannot download browsers here)."""
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}
