"""PostgresBackend: lazy psycopg, translated errors, one schema with the server's storage."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from nexus_store import LifecycleError, NetworkError
from nexus_store.backends import OpStatus, PostgresBackend
from nexus_store.server._core import open_core
from nexus_store.testing import OpWriter

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def test_importing_the_package_does_not_import_psycopg() -> None:
    """`import nexus_store` (and its backends and server packages) leaves psycopg unloaded."""
    code = (
        "import sys, nexus_store, nexus_store.backends, nexus_store.server, nexus_store.testing;"
        "from nexus_store.backends import MemoryBackend;"
        "print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_backend_and_server_storage_share_data(postgres_dsn: str, tenant: str) -> None:
    """What a PostgresBackend writes, a server core on the same database serves, and back."""
    w = OpWriter("notes")
    async with PostgresBackend(postgres_dsn, tenant=tenant) as backend:
        await backend.push([w.upsert("a", {"from": "backend"})])
        async with await open_core(postgres_dsn) as server:
            page = await server.pull(tenant)
            assert [c.data for c in page.changes] == [{"from": "backend"}]
            await server.push(tenant, [w.upsert("b", {"from": "server"})])
        page = await backend.pull(1)
        assert [c.data for c in page.changes] == [{"from": "server"}]


async def test_policy_and_lifecycle(postgres_dsn: str, tenant: str) -> None:
    """conflict_policy is honoured; a closed backend raises LifecycleError."""
    w = OpWriter("n")
    backend = PostgresBackend(postgres_dsn, tenant=tenant, conflict_policy="server_wins")
    await backend.push([w.upsert("a", {"v": 1}, millis=1)])
    answer = (await backend.push([w.upsert("a", {"v": 2}, millis=9)])).results[0]
    assert answer.status is OpStatus.CONFLICT
    await backend.aclose()
    await backend.aclose()
    with pytest.raises(LifecycleError):
        await backend.pull()
    with pytest.raises(LifecycleError):
        await backend.push([])


async def test_unreachable_database_raises_network_error() -> None:
    """A database that cannot be reached raises NetworkError from push and pull."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = PostgresBackend(f"postgresql://nobody@127.0.0.1:{port}/none")
    with pytest.raises(NetworkError):
        await backend.push([OpWriter("n").upsert(1, {})])
    with pytest.raises(NetworkError):
        await backend.pull()
    await backend.aclose()
    assert "nobody" not in repr(backend)
