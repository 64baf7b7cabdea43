"""The shared SQLite connection: pragmas, transactions, error translation, identifiers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nexus_store import CorruptDatabaseError, DatabaseError, SchemaError, StoreClosedError
from nexus_store._database import Database, validate_identifier


def test_file_database_uses_wal_and_requested_durability(tmp_path: Path) -> None:
    """A file database is in WAL mode with synchronous FULL by default, NORMAL on request."""
    db = Database(tmp_path / "a.db")
    assert db.execute("PRAGMA journal_mode")[0][0] == "wal"
    assert db.execute("PRAGMA synchronous")[0][0] == 2
    db.close()
    normal = Database(tmp_path / "a.db", durability="normal")
    assert normal.execute("PRAGMA synchronous")[0][0] == 1
    normal.close()
    with pytest.raises(ValueError, match="durability"):
        Database(tmp_path / "b.db", durability="fast")  # type: ignore[arg-type]


def test_transaction_commits_or_rolls_back_whole(tmp_path: Path) -> None:
    """A failing block leaves nothing behind, nested blocks join the outer transaction."""
    db = Database(tmp_path / "t.db")
    db.execute("CREATE TABLE t (x INTEGER)")
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with db.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (3)")
        with db.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (4)")
        raise RuntimeError("boom")
    assert db.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    with pytest.raises(DatabaseError), db.transaction() as conn:
        conn.execute("INSERT INTO missing VALUES (1)")
    db.close()


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database at all" * 100,
        b"\x00" * 8192,
        b"SQLite format 3\x00" + b"\xff" * 4000,
        b"x",  # SQLite takes a 1-byte file as empty and would overwrite it
        b"SQLite format 3\x00",
    ],
)
def test_non_sqlite_file_raises_corrupt_error(tmp_path: Path, content: bytes) -> None:
    """Random bytes, zeros or a damaged header give CorruptDatabaseError at open."""
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(CorruptDatabaseError):
        Database(path)


def test_closed_database_refuses_work(tmp_path: Path) -> None:
    """After close() every use raises StoreClosedError; close is idempotent."""
    db = Database(tmp_path / "c.db")
    db.close()
    db.close()
    with pytest.raises(StoreClosedError):
        db.execute("SELECT 1")
    with pytest.raises(StoreClosedError), db.transaction():
        pass


def test_concurrent_transactions_from_threads(tmp_path: Path) -> None:
    """Threads sharing one Database serialise their transactions without losing rows."""
    db = Database(tmp_path / "th.db")
    db.execute("CREATE TABLE t (x INTEGER)")

    def work(base: int) -> None:
        for i in range(50):
            with db.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (base + i,))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert db.execute("SELECT count(*) FROM t")[0][0] == 200


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a b", 'x"; DROP TABLE t; --', "sqlite_master", "nx_queue", "_nx_x", "a" * 64],
)
def test_unsafe_identifiers_rejected(name: str) -> None:
    """Names that are not plain identifiers, or use reserved prefixes, give SchemaError."""
    with pytest.raises(SchemaError):
        validate_identifier(name)


def test_safe_identifier_accepted() -> None:
    """A plain identifier passes unchanged."""
    assert validate_identifier("field_name2") == "field_name2"
