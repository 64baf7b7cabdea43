"""The backend contract suite on the in-process backends (memory, PostgreSQL, SQLite core)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus_store.backends import MemoryBackend, PostgresBackend
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.server.storage._sqlite import SqliteStorage
from nexus_store.testing import BackendFactory, MultiTenantBackendContract


class TestMemoryBackendContract(MultiTenantBackendContract):
    """MemoryBackend: clients of one in-process core over memory storage."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """The in-process backends need no asyncio-only library: check trio too."""
        return str(request.param)

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """Clients of one shared in-memory server."""
        core = ServerCore(MemoryStorage())
        return lambda tenant: MemoryBackend(core, tenant=tenant)


class TestSqliteCoreContract(MultiTenantBackendContract):
    """The core straight over SQLite storage (what `nexus-store serve` runs by default)."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """SQLite storage runs on worker threads through anyio: check trio too."""
        return str(request.param)

    @pytest.fixture
    async def backend_factory(self, tmp_path: Path) -> AsyncIterator[BackendFactory]:
        """Clients of one in-process core over an SQLite file."""
        core = ServerCore(SqliteStorage(tmp_path / "server.db"))
        yield lambda tenant: MemoryBackend(core, tenant=tenant)
        await core.aclose()


@pytest.mark.postgres
class TestPostgresBackendContract(MultiTenantBackendContract):
    """PostgresBackend: each client its own connections to one real PostgreSQL."""

    @pytest.fixture
    def backend_factory(self, postgres_dsn: str) -> BackendFactory:
        """New PostgresBackend clients on the session's database."""
        return lambda tenant: PostgresBackend(postgres_dsn, tenant=tenant)
