"""Fixtures for backend tests: a shared PostgreSQL started from pgserver."""

from __future__ import annotations

import uuid

import pytest

from nexus_store.testing import shared_postgres


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A database of its own on the test session's PostgreSQL (from pgserver)."""
    return shared_postgres().create_database()


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
