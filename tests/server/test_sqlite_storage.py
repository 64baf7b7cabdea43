"""SQLite storage: durability settings, persistence, schema versions, two writers on a file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest

from nexus_store import CorruptDatabaseError, DatabaseError, SchemaError, ServerUnavailableError
from nexus_store.backends import OpStatus, PushResult
from nexus_store.server._core import ServerCore, open_core
from nexus_store.server.storage import open_storage
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.server.storage._postgres import PostgresStorage
from nexus_store.server.storage._sqlite import SqliteStorage, _serving
from nexus_store.testing import OpWriter


@pytest.mark.anyio
async def test_data_and_op_records_survive_reopen(tmp_path: Path) -> None:
    """After a restart the head, the items and the op records (replays) are all there."""
    url = f"sqlite:///{tmp_path}/s.db"
    w = OpWriter("n")
    ops = [w.upsert(1, {"a": 1}), w.delete(2)]
    async with await open_core(url) as core:
        first = await core.push("t", ops)
    async with await open_core(url) as core:
        assert await core.head("t") == 2
        assert (await core.push("t", ops)).results == first.results
        page = await core.pull("t")
        assert [(c.item_id, c.deleted) for c in page.changes] == [(1, False), (2, True)]
        assert (await core.push("t", [w.upsert(3, {})])).results[0].version == 3


def test_file_is_wal_with_requested_durability(tmp_path: Path) -> None:
    """The file is in WAL mode, synchronous FULL by default and NORMAL on request."""
    full = open_storage(f"sqlite:///{tmp_path}/a.db")
    normal = open_storage(f"sqlite:///{tmp_path}/b.db?durability=normal")
    assert isinstance(full, SqliteStorage)
    assert isinstance(normal, SqliteStorage)
    with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert full._writer.execute("PRAGMA synchronous")[0][0] == 2
    assert normal._writer.execute("PRAGMA synchronous")[0][0] == 1
    anyio.run(full.aclose)
    anyio.run(normal.aclose)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer schema version is refused with SchemaError."""
    anyio.run(SqliteStorage(tmp_path / "s.db").aclose)
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as conn, conn:
        conn.execute("UPDATE nx_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="upgrade"):
        SqliteStorage(tmp_path / "s.db")


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    """Opening a non-SQLite file raises the typed corrupt-database error."""
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptDatabaseError):
        SqliteStorage(bogus)


def test_database_failures_while_serving_are_retryable() -> None:
    """A database error during a request surfaces as ServerUnavailableError."""
    with pytest.raises(ServerUnavailableError, match="disk I/O"), _serving("x.db"):
        raise DatabaseError("x.db: disk I/O error")


@pytest.mark.anyio
async def test_two_storages_on_one_file_share_the_sequence(tmp_path: Path) -> None:
    """Two storages on one file (as two processes would) keep one gap-free sequence."""
    cores = [ServerCore(SqliteStorage(tmp_path / "s.db")) for _ in range(2)]
    results: list[PushResult] = []

    async def write(index: int) -> None:
        w = OpWriter("n", node=f"w{index}")
        for start in range(0, 60, 6):
            ops = [w.upsert(f"{index}-{n}", {}) for n in range(start, start + 6)]
            results.append(await cores[index].push("t", ops))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for index in range(2):
                tg.start_soon(write, index)
    versions = sorted(r.version or 0 for p in results for r in p.results)
    assert versions == list(range(1, 121))
    assert all(r.status is OpStatus.ACCEPTED for p in results for r in p.results)
    page = await cores[1].pull("t", 0, 500)
    assert [c.version for c in page.changes] == list(range(1, 121))
    for core in cores:
        await core.aclose()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryStorage),
        ("MEMORY://", MemoryStorage),
        ("postgresql://u@127.0.0.1/db", PostgresStorage),
        ("postgres://u@127.0.0.1/db", PostgresStorage),
    ],
)
def test_open_storage_picks_by_scheme(url: str, kind: type) -> None:
    """The URL's scheme names the storage."""
    assert isinstance(open_storage(url), kind)


def test_sqlite_urls_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///rel is relative to the working directory, sqlite:////abs is absolute."""
    monkeypatch.chdir(tmp_path)
    relative = open_storage("sqlite:///rel.db")
    absolute = open_storage(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(relative, SqliteStorage)
    assert isinstance(absolute, SqliteStorage)
    assert relative.path == "rel.db"
    assert absolute.path == f"{tmp_path}/abs.db"
    assert (tmp_path / "rel.db").exists()
    assert (tmp_path / "abs.db").exists()
    anyio.run(relative.aclose)
    anyio.run(absolute.aclose)


@pytest.mark.parametrize(
    "url",
    [
        "server.db",
        "mysql://x/y",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?durability=fast",
        "sqlite:///x.db?journal=off",
    ],
)
def test_bad_storage_urls_are_refused(url: str) -> None:
    """Unknown schemes, missing paths and unknown options raise ValueError."""
    with pytest.raises(ValueError, match=r"URL|scheme|storage"):
        open_storage(url)


@pytest.mark.anyio
async def test_large_batches_are_written_as_in_memory(tmp_path: Path) -> None:
    """Batches past one multi-row statement (whole ones and a remainder) store and answer
    exactly what the in-memory storage does: new items, updates, stale writes, deletes,
    replays."""
    w = OpWriter("notes")
    first = [w.upsert(f"i{n}", {"n": n}) for n in range(250)]
    second = [
        *[w.upsert(f"i{n}", {"n": -n}, base=n + 1) for n in range(120)],  # fresh updates
        *[w.upsert(f"i{n}", {"stale": n}, base=1, millis=1) for n in range(120, 150)],
        *[w.delete(f"i{n}", base=n + 1) for n in range(150, 230)],
        *[w.upsert(f"new{n}", {"n": n}) for n in range(31)],
        *first[:40],  # replays
    ]
    answers: list[list[PushResult]] = []
    pages = []
    for storage in (MemoryStorage(), SqliteStorage(tmp_path / "big.db")):
        async with ServerCore(storage) as core:
            answers.append([await core.push("t", first), await core.push("t", second)])
            pages.append(await core.pull("t", 0, 1000))
    assert answers[0] == answers[1]
    assert pages[0] == pages[1]
    statuses = {r.status for r in answers[1][1].results}
    assert statuses == {OpStatus.ACCEPTED, OpStatus.CONFLICT}
    assert len(pages[1].changes) == 281
