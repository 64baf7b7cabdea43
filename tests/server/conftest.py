"""Fixtures for the server core tests: storages by URL, a shared PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus_store.server._core import ServerCore, open_core
from nexus_store.testing import shared_postgres


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A database of its own on the test session's PostgreSQL (from pgserver)."""
    return shared_postgres().create_database()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL of each kind."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/server.db"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
async def core(storage_url: str) -> AsyncIterator[ServerCore]:
    """An opened core over each storage, closed after the test."""
    async with await open_core(storage_url) as opened:
        yield opened


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
