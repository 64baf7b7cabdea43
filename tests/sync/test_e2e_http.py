"""End to end: stores syncing through HttpBackend with a real ``nexus-store serve`` process."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from nexus_store import SyncPriority
from nexus_store._database import Database
from nexus_store._store import NexusStore
from nexus_store.backends import Change
from nexus_store.backends._http import HttpBackend
from nexus_store.cli import app
from nexus_store.queue import PrioritySyncQueue
from nexus_store.sync.engine._progress import SyncStopReason
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.testing import FakeClock, FaultMode, FaultProxy, ServerProcess, shared_postgres

pytestmark = pytest.mark.anyio

_TOKENS = {f"tok{i}": f"tenant{i}" for i in range(64)}
_next_token = itertools.count()


class Note(BaseModel):
    id: str
    text: str
    n: int = 0


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process (SQLite storage) for the module; tests use their own tenants."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=_TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[ServerProcess]:
    """One server process on a PostgreSQL database of its own (from pgserver)."""
    dsn = shared_postgres().create_database()
    with ServerProcess(dsn, tokens=_TOKENS) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    """The server, with each storage."""
    fixture = "sqlite_server" if request.param == "sqlite" else "postgres_server"
    found: ServerProcess = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def token() -> str:
    """A token of a tenant no other test uses."""
    return f"tok{next(_next_token)}"


@pytest.fixture
async def backend(sqlite_server: ServerProcess, token: str) -> AsyncIterator[HttpBackend]:
    """A client of the SQLite-backed server for this test's tenant."""
    async with HttpBackend(sqlite_server.base_url, token=token, timeout=10) as client:
        yield client


async def server_items(backend: HttpBackend) -> list[Change]:
    """Everything the tenant has on the server, in version order."""
    found: list[Change] = []
    cursor = 0
    for _ in range(1000):
        page = await backend.pull(cursor, 5000)
        found += page.changes
        if not page.has_more:
            return found
        cursor = page.cursor
    raise AssertionError("pull did not finish")


def head(items: list[Change]) -> int:
    """The tenant's change counter: one per accepted write, so a replay would show here."""
    return max((c.version for c in items), default=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- delivery ----------------------------------------------------------------------------------


async def test_offline_saves_then_sync_in_priority_order(server: ServerProcess, token: str) -> None:
    """Saves made while the server is unreachable all arrive once, CRITICAL first."""
    clock = FakeClock()
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    priorities = list(SyncPriority)
    for i in range(2000):
        store.save(Note(id=f"n{i:04d}", text="x" * 100, n=i), priority=priorities[(i * 7) % 4])
    async with HttpBackend(f"http://127.0.0.1:{_free_port()}", token=token, timeout=2) as down:
        offline = await SyncRunner(store, down, batch_size=200).run()
    assert offline.stop_reason is SyncStopReason.FAILURES
    assert offline.pushed == 0
    assert store.queue.stats().live == 2000
    clock.advance(3600)  # past every backoff
    async with HttpBackend(server.base_url, token=token, timeout=10) as up:
        summary = await SyncRunner(store, up, batch_size=200).run()
        items = await server_items(up)
    assert summary.ok
    assert summary.pushed == 2000
    assert store.queue.stats().total == 0
    assert len(items) == head(items) == 2000
    by_priority = [priorities[(c.data["n"] * 7) % 4] for c in items if c.data]
    assert by_priority == sorted(by_priority)
    assert store.stored_version("n0001") == next(c.version for c in items if c.item_id == "n0001")


async def test_per_item_order_and_coalescing_over_http(backend: HttpBackend) -> None:
    """Kept ops arrive in write order whatever their priority; coalesced ones arrive once."""
    clock = FakeClock()
    audit: NexusStore[Note, str] = NexusStore(
        ":memory:", model=Note, clock=clock, coalesce=False, collection="audit"
    )
    notes: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    for n, priority in enumerate([SyncPriority.LOW, SyncPriority.NORMAL, SyncPriority.CRITICAL]):
        audit.save(Note(id="a", text=f"v{n}", n=n), priority=priority)
        notes.save(Note(id="a", text=f"v{n}", n=n), priority=priority)
    audit.save(Note(id="b", text="v0"), priority=SyncPriority.HIGH)
    audit.delete("b", priority=SyncPriority.LOW)
    assert (await SyncRunner(audit, backend, batch_size=1).run()).pushed == 5
    assert (await SyncRunner(notes, backend).run()).pushed == 1
    items = {(c.collection, c.item_id): c for c in await server_items(backend)}
    assert items[("audit", "a")].data == {"id": "a", "text": "v2", "n": 2}
    assert items[("audit", "b")].deleted
    assert items[("note", "a")].data == {"id": "a", "text": "v2", "n": 2}
    assert head(list(items.values())) == 6


async def test_two_clients_editing_one_item_last_writer_wins(
    sqlite_server: ServerProcess, token: str
) -> None:
    """The later write wins on both devices; the earlier writer adopts the server copy."""
    clock_a, clock_b = FakeClock(), FakeClock()
    a: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock_a)
    b: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock_b)
    async with (
        HttpBackend(sqlite_server.base_url, token=token) as back_a,
        HttpBackend(sqlite_server.base_url, token=token) as back_b,
    ):
        a.save(Note(id="x", text="a0"))
        await SyncRunner(a, back_a).run()
        await SyncRunner(b, back_b).run()
        clock_a.advance(10)
        b.save(Note(id="x", text="b1 (older)"))
        a.save(Note(id="x", text="a1 (newer)"))
        clock_b.advance(20)
        a.save(Note(id="y", text="a"))
        b.save(Note(id="y", text="b (newer)"))
        assert (await SyncRunner(a, back_a).run()).pushed == 2
        loser = await SyncRunner(b, back_b).run()
        assert loser.conflicts == 1
        await SyncRunner(a, back_a).run()
        items = {c.item_id: c for c in await server_items(back_a)}
    for store in (a, b):
        assert store.get("x") == Note(id="x", text="a1 (newer)")
        assert store.get("y") == Note(id="y", text="b (newer)")
        assert store.queue.stats().total == 0
    assert items["x"].data == {"id": "x", "text": "a1 (newer)", "n": 0}


async def test_pull_after_cursor_over_http(backend: HttpBackend) -> None:
    """A client pulls only what changed since its stored cursor."""
    clock = FakeClock()
    writer: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    reader: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    writer.save_many([Note(id=f"n{i}", text="v1") for i in range(120)])
    await SyncRunner(writer, backend).run()
    assert (await SyncRunner(reader, backend).run()).pulled == 120
    assert (await SyncRunner(reader, backend).run()).pulled == 0
    writer.save(Note(id="n5", text="v2"))
    writer.delete("n6")
    await SyncRunner(writer, backend).run()
    again = await SyncRunner(reader, backend).run()
    assert again.pulled == 2
    assert reader.get("n5") == Note(id="n5", text="v2")
    assert reader.get("n6") is None
    assert reader.count() == 119


# -- interruptions -----------------------------------------------------------------------------


async def test_cancelling_mid_run_over_http_loses_nothing(
    sqlite_server: ServerProcess, token: str
) -> None:
    """Cancelled while the server holds the answer: ops go back, the resend applies once."""
    clock = FakeClock()
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(300)])
    async with FaultProxy(sqlite_server.base_url) as proxy:
        proxy.set_fault(FaultMode.STALL, path_prefix="/v1/push")
        async with HttpBackend(proxy.url, token=token, timeout=30) as client:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as group:
                    group.start_soon(SyncRunner(store, client, batch_size=100).run)
                    await proxy.wait_until(lambda stats: stats.stalled > 0)
                    group.cancel_scope.cancel()
            stats = store.queue.stats()
            assert (stats.leased, stats.pending) == (0, 300)
            assert all(op.attempts == 0 for op in store.queue.pending())
            proxy.clear()
            summary = await SyncRunner(store, client, batch_size=100).run()
            items = await server_items(client)
    assert summary.pushed == 300
    assert len(items) == head(items) == 300


_SYNC_CLI = "from nexus_store.cli import main; main()"


def _start_sync(db: Path, url: str, token: str, *args: str) -> subprocess.Popen[bytes]:
    log = db.with_suffix(".log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _SYNC_CLI, "sync", "--db", str(db), "--remote", url, *args],
            env={**os.environ, "NEXUS_STORE_TOKEN": token},
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()  # the child has its own copy


def _queue_total(db: Path) -> int:
    database = Database(db)
    try:
        return PrioritySyncQueue(database).stats().total
    finally:
        database.close()


def _log(db: Path) -> str:
    return db.with_suffix(".log").read_text(errors="replace")


async def _items_of(url: str, token: str) -> list[Change]:
    async with HttpBackend(url, token=token) as client:
        return await server_items(client)


def _next_eligible(db: Path) -> float | None:
    database = Database(db)
    try:
        return PrioritySyncQueue(database).next_eligible_at()
    finally:
        database.close()


@pytest.mark.parametrize("ops", [pytest.param(6000), pytest.param(30000, marks=pytest.mark.slow)])
def test_sigkill_mid_sync_then_sync_again_applies_every_op_once(
    sqlite_server: ServerProcess, token: str, tmp_path: Path, ops: int
) -> None:
    """SIGKILL a syncing process mid-run; syncing again applies every op exactly once."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    for start in range(0, ops, 1000):
        store.save_many(
            [Note(id=f"n{i}", text="x" * 50, n=i) for i in range(start, start + 1000)],
            priority=SyncPriority.NORMAL if start % 2000 else SyncPriority.HIGH,
        )
    store.close()
    url = sqlite_server.base_url
    process = _start_sync(db, url, token, "--batch-size", "100", "--lease-for", "1")
    try:
        deadline = time.monotonic() + 60
        while _queue_total(db) > ops * 2 // 3:  # bounded polling of another process
            assert process.poll() is None, _log(db)
            assert time.monotonic() < deadline, "the sync made no progress"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)
    left = _queue_total(db)
    assert 0 < left < ops
    # The killed run's leases expire after --lease-for; each restart syncs what it can.
    for _ in range(20):
        rerun = _start_sync(db, url, token, "--batch-size", "500", "--lease-for", "1")
        code = rerun.wait(120)
        if _queue_total(db) == 0:
            assert code == 0, _log(db)
            break
        # What is left is held by the killed run's leases: wait for them to run out (a
        # deadline, not work).
        when = _next_eligible(db)
        assert when is not None
        time.sleep(min(2.0, max(0.0, when - time.time())) + 0.01)
    assert _queue_total(db) == 0
    items = anyio.run(_items_of, url, token)
    assert len(items) == head(items) == ops
    reopened: NexusStore[Note, str] = NexusStore(db, model=Note)
    try:
        assert reopened.count() == ops
        assert all(reopened.stored_version(f"n{i}") for i in range(0, ops, 97))
    finally:
        reopened.close()


def test_sync_cli_exit_codes(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """0 after a clean run, 1 when something failed, 2 on bad input."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save(Note(id="a", text="x"), priority=SyncPriority.CRITICAL)
    store.queue.enqueue("note", "poison", store.queue.pending()[0].payload, hlc="bad\x00")
    store.close()
    runner = CliRunner()
    env = {"NEXUS_STORE_TOKEN": f"tok{next(_next_token)}"}
    url = sqlite_server.base_url

    def sync(*args: str) -> Result:
        return runner.invoke(app, ["sync", *args], env=env)

    failing = sync("--db", str(db), "--remote", url)
    assert failing.exit_code == 1, failing.output
    assert "CRITICAL" in failing.output
    assert "1 dead-lettered ops in the file" in failing.output
    clean = sync("--db", str(db), "--remote", url)
    assert clean.exit_code == 0, clean.output
    assert sync("--db", str(db), "--remote", "ftp://nowhere").exit_code == 2
    assert sync("--db", str(tmp_path / "missing.db"), "--remote", url).exit_code == 2
    assert sync("--db", str(db), "--remote", url, "--collection", "nope").exit_code == 2
