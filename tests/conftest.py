"""Shared fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (trio where a test asks for it explicitly)."""
    return "asyncio"
