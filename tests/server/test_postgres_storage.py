"""PostgreSQL storage: several cores (as several server processes would) on one database.

What is guaranteed and checked here: a tenant's change numbers are **gap-free** (every
accepted change takes head+1 under the tenant's row lock) and commit in order, so
concurrent writers on separate connections produce exactly 1..N, and a reader paging
concurrently never skips a change.
"""

from __future__ import annotations

import socket
import sys

import anyio
import psycopg
import pytest
from psycopg import errors as pg_errors

from nexus_store import AuthError, NetworkError, ServerUnavailableError
from nexus_store.backends import Change, OpStatus, PushResult
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._postgres import PostgresStorage, translate_psycopg_error
from nexus_store.testing import OpWriter, shared_postgres

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_concurrent_writers_get_a_gap_free_sequence(postgres_dsn: str, tenant: str) -> None:
    """Two cores pushing for one tenant at once: versions are exactly 1..N, each op once,
    and a reader paging meanwhile sees every change exactly once, in increasing order."""
    cores = [ServerCore(PostgresStorage(postgres_dsn)) for _ in range(2)]
    reader = ServerCore(PostgresStorage(postgres_dsn))
    writers = [OpWriter("n", node=f"w{i}") for i in range(2)]
    per_writer, batch = 120, 8
    pushed: list[PushResult] = []
    seen: list[Change] = []
    done = anyio.Event()

    async def write(index: int) -> None:
        w = writers[index]
        for start in range(0, per_writer, batch):
            ops = [w.upsert(f"w{index}-{n}", {"n": n}) for n in range(start, start + batch)]
            pushed.append(await cores[index].push(tenant, ops))

    async def read() -> None:
        cursor = 0
        for _ in range(100_000):
            finished = done.is_set()
            page = await reader.pull(tenant, cursor, 7)
            seen.extend(page.changes)
            cursor = page.cursor
            if finished and not page.has_more:
                return
            if not page.changes:
                await anyio.lowlevel.checkpoint()
        raise AssertionError("reader did not catch up")

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            async with anyio.create_task_group() as writers_tg:
                for index in range(2):
                    writers_tg.start_soon(write, index)
            done.set()
    total = 2 * per_writer
    versions = [r.version for p in pushed for r in p.results]
    assert all(r.status is OpStatus.ACCEPTED for p in pushed for r in p.results)
    assert sorted(v or 0 for v in versions) == list(range(1, total + 1))
    assert [c.version for c in seen] == list(range(1, total + 1))
    assert len({c.item_id for c in seen}) == total
    for core in (*cores, reader):
        await core.aclose()


async def test_batches_of_only_tombstones_or_only_conflicts(postgres_dsn: str, tenant: str) -> None:
    """Arrays whose every element is NULL (no data, no versions) travel as binary arrays
    too: deletions of unknown items, then stale writes that all conflict, then a replay."""
    core = ServerCore(PostgresStorage(postgres_dsn), conflict_policy="server_wins")
    writer = OpWriter("n")
    deletes = [writer.delete(f"d{n}") for n in range(3)]
    first = await core.push(tenant, deletes)
    assert [(r.status, r.version) for r in first.results] == [
        (OpStatus.ACCEPTED, n) for n in (1, 2, 3)
    ]
    stale = [writer.upsert(f"d{n}", {"n": n}) for n in range(3)]  # based on version 0
    conflicts = await core.push(tenant, stale)
    assert [r.status for r in conflicts.results] == [OpStatus.CONFLICT] * 3
    assert [r.item.deleted for r in conflicts.results if r.item is not None] == [True] * 3
    assert await core.push(tenant, stale) == conflicts  # answered from the records
    page = await core.pull(tenant, 0, 10)
    assert [(c.item_id, c.deleted, c.data) for c in page.changes] == [
        (f"d{n}", True, None) for n in range(3)
    ]
    await core.aclose()


async def test_same_batch_on_two_connections_applies_once(postgres_dsn: str, tenant: str) -> None:
    """The same batch pushed through two cores (two connections) at once has one effect."""
    cores = [ServerCore(PostgresStorage(postgres_dsn)) for _ in range(2)]
    w = OpWriter("n")
    ops = [w.upsert(i, {"i": i}) for i in range(30)]
    results: list[PushResult] = []

    async def push(core: ServerCore) -> None:
        for _ in range(3):
            results.append(await core.push(tenant, ops))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for core in cores:
                tg.start_soon(push, core)
    assert all(r.results == results[0].results for r in results)
    assert await cores[0].head(tenant) == 30
    for core in cores:
        await core.aclose()


async def test_schema_is_created_once_by_racing_processes() -> None:
    """Several storages opening a fresh database at once all succeed (schema lock)."""
    dsn = shared_postgres().create_database()
    storages = [PostgresStorage(dsn) for _ in range(4)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for storage in storages:
                tg.start_soon(storage.open)
    core = ServerCore(storages[0])
    assert (await core.push("t", [OpWriter("n").upsert(1, {})])).results[0].version == 1
    for storage in storages:
        await storage.aclose()


async def test_a_killed_connection_is_translated_and_replaced(
    postgres_dsn: str, tenant: str
) -> None:
    """A connection the server terminates raises a retryable error; the next call reconnects."""
    storage = PostgresStorage(postgres_dsn, max_idle=1)
    core = ServerCore(storage)
    w = OpWriter("n")
    await core.push(tenant, [w.upsert(1, {})])
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'nexus-store' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed
    with pytest.raises((NetworkError, ServerUnavailableError)):
        await core.push(tenant, [w.upsert(2, {})])
    assert (await core.push(tenant, [w.upsert(3, {})])).results[0].status is OpStatus.ACCEPTED
    assert await core.head(tenant) == 2
    await core.aclose()


async def test_unreachable_server_is_a_network_error() -> None:
    """A refused connection raises NetworkError, not a psycopg exception."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    core = ServerCore(
        PostgresStorage(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout=2)
    )
    with anyio.fail_after(20), pytest.raises(NetworkError):
        await core.pull("t")
    await core.aclose()


def test_psycopg_errors_map_to_retryable_or_auth() -> None:
    """Auth failures become AuthError, lost connections NetworkError, the rest retryable."""
    assert isinstance(translate_psycopg_error(pg_errors.InvalidPassword("no")), AuthError)
    assert isinstance(translate_psycopg_error(psycopg.OperationalError("gone")), NetworkError)
    assert isinstance(translate_psycopg_error(psycopg.InterfaceError("closed")), NetworkError)
    assert isinstance(translate_psycopg_error(pg_errors.ConnectionFailure("x")), NetworkError)
    for retryable in (
        pg_errors.SerializationFailure("x"),
        pg_errors.DeadlockDetected("x"),
        pg_errors.UniqueViolation("x"),
        pg_errors.InsufficientPrivilege("x"),
        pg_errors.AdminShutdown("x"),
    ):
        error = translate_psycopg_error(retryable)
        assert isinstance(error, ServerUnavailableError)
        assert str(retryable.sqlstate) in str(error)


def test_repr_hides_the_dsn() -> None:
    """A storage's repr never shows the DSN (it may hold a password)."""
    assert "secret" not in repr(PostgresStorage("postgresql://u:secret@127.0.0.1/db"))


_WRITER = """
import sys, anyio
from nexus_store.server._core import open_core
from nexus_store.testing import OpWriter

async def main(dsn, tenant, name):
    w = OpWriter("n", node=name)
    async with await open_core(dsn) as core:
        for start in range(0, 200, 10):
            ops = [w.upsert(f"{name}-{n}", {"n": n}) for n in range(start, start + 10)]
            result = await core.push(tenant, ops)
            assert all(r.status.value == "accepted" for r in result.results)

anyio.run(main, *sys.argv[1:])
"""


async def test_two_processes_share_one_sequence(postgres_dsn: str, tenant: str) -> None:
    """Two OS processes writing one tenant at once produce versions 1..400, each op once."""

    async def run(name: str) -> None:
        await anyio.run_process(
            [sys.executable, "-c", _WRITER, postgres_dsn, tenant, name], check=True
        )

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for name in ("p1", "p2"):
                tg.start_soon(run, name)
    core = ServerCore(PostgresStorage(postgres_dsn))
    changes: list[Change] = []
    cursor = 0
    for _ in range(100):
        page = await core.pull(tenant, cursor, 150)
        changes.extend(page.changes)
        cursor = page.cursor
        if not page.has_more:
            break
    assert [c.version for c in changes] == list(range(1, 401))
    assert len({c.item_id for c in changes}) == 400
    await core.aclose()
