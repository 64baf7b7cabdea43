"""One SQLite connection, shared by a store's tables and its sync queue.

The item write and its queue op must commit in one transaction, so the local tables
(:mod:`._local`) and the queue (:mod:`._queue`) use the same :class:`Database`: one
``sqlite3`` connection in autocommit mode, transactions opened explicitly with
``BEGIN IMMEDIATE`` under a re-entrant lock (which is what makes the store thread-safe).

Nothing but SQLite ever opens the file (or its ``-wal`` and ``-shm``) while this process may
hold a connection on it: on POSIX, closing *any* descriptor of a file drops every lock the
process holds on it, and SQLite's WAL safety depends on those locks (without them another
process's close deletes the WAL that later commits go to). Checks that need the file go
through SQLite or ``os.stat()``.

sqlite3 errors are translated here: a file that is not SQLite, or is damaged, raises
:class:`~nexus_store.CorruptDatabaseError`; other failures :class:`~nexus_store.DatabaseError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from ._exceptions import CorruptDatabaseError, DatabaseError, SchemaError, StoreClosedError

__all__ = ["Database", "Durability", "quote_identifier", "validate_identifier"]

Durability = Literal["full", "normal"]
"""``"full"``: ``synchronous=FULL``, an acknowledged save survives power loss (default).
``"normal"``: ``synchronous=NORMAL`` in WAL mode, faster; an acknowledged save survives an
application crash but the last transactions may roll back after power loss or an OS crash."""

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_RESERVED_PREFIXES = ("sqlite_", "_nx_", "nx_")
_CORRUPT_MARKERS = ("file is not a database", "malformed", "file is encrypted", "corrupt")


def _refuse_one_byte_file(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a 1-byte file, which SQLite takes as an empty database and would overwrite.

    Every other file that is not SQLite is refused by SQLite itself. The check goes
    through SQLite and ``stat()`` only: opening the file with anything but SQLite, even to
    read a header, would drop every POSIX lock this process holds on it (closing *any*
    descriptor of a file does), and with them the WAL locks of connections already open.
    Inside a read transaction, so no writer can grow the file between the two looks.
    """
    conn.execute("BEGIN")
    try:
        if conn.execute("PRAGMA page_count").fetchone()[0] != 0:
            return
        try:
            size = os.stat(path).st_size
        except OSError:
            return  # nothing there yet: SQLite creates it
        if size != 0:
            raise CorruptDatabaseError(f"{path}: not an SQLite database ({size}-byte file)")
    finally:
        conn.execute("COMMIT")


def validate_identifier(name: str, *, what: str = "name") -> str:
    """Check that ``name`` is safe as an SQLite table or column name.

    Allowed: a letter, then letters, digits and underscores, at most 63 characters, not
    starting with a reserved prefix (``sqlite_``, ``nx_``, ``_nx_``).

    Raises:
        SchemaError: if the name is not allowed.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SchemaError(
            f"{what} {name!r} is not a safe identifier: use a letter followed by letters, "
            "digits or underscores (at most 63 characters)"
        )
    if name.lower().startswith(_RESERVED_PREFIXES):
        raise SchemaError(f"{what} {name!r} uses a reserved prefix")
    return name


def quote_identifier(name: str) -> str:
    """Return ``name`` double-quoted for SQL (the name must already be validated)."""
    return '"' + name.replace('"', '""') + '"'


def translate_sqlite_error(exc: sqlite3.Error, path: str) -> DatabaseError:
    """Map an ``sqlite3`` exception to our tree (corrupt vs other database errors)."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and any(m in text for m in _CORRUPT_MARKERS):
        return CorruptDatabaseError(f"{path}: not an SQLite database or damaged ({exc})")
    return DatabaseError(f"{path}: {exc}")


class Database:
    """A thread-safe SQLite connection with explicit transactions.

    Args:
        path: a file path, or ``":memory:"``.
        durability: ``"full"`` (default) or ``"normal"``; see :data:`Durability`.
        busy_timeout: seconds to wait for another process's write lock.

    Raises:
        CorruptDatabaseError: the file exists but is not an SQLite database, or is damaged.
        DatabaseError: the file cannot be opened.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = "full",
        busy_timeout: float = 30.0,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.path = str(path)
        self.durability: Durability = durability
        self.lock = threading.RLock()
        self._depth = 0
        self._closed = False
        try:
            self.conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.path) from exc
        try:
            # Reading the schema is what detects "file is not a database".
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if self.path not in (":memory:", ""):
                _refuse_one_byte_file(self.conn, self.path)
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise DatabaseError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
            sync = "FULL" if durability == "full" else "NORMAL"
            self.conn.execute(f"PRAGMA synchronous={sync}")
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            self.conn.close()
            raise translate_sqlite_error(exc, self.path) from exc
        except DatabaseError:
            self.conn.close()
            raise
        self.utils = sqlite_utils.Database(self.conn)
        """sqlite-utils view of the connection, for schema work (not for the hot path)."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`StoreClosedError` if the database was closed."""
        if self._closed:
            raise StoreClosedError(f"{self.path}: the store is closed")

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``).

        Re-entrant: a nested ``transaction()`` joins the outer one (whose ``durable``
        applies). On an exception the whole transaction rolls back and the exception
        propagates (sqlite3 errors translated).

        Args:
            durable: ``False`` commits without waiting for the disk even with
                ``durability="full"`` (``synchronous=NORMAL`` for this commit): still atomic,
                but a power loss may roll it back, until the next durable commit (WAL
                syncs every earlier commit with it). For bookkeeping whose loss is harmless.
        """
        with self.lock:
            self.check_open()
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            relaxed = not durable and self.durability == "full"
            if relaxed:
                self._set_synchronous("NORMAL")
            try:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise translate_sqlite_error(exc, self.path) from exc
                self._depth = 1
                try:
                    yield self.conn
                except BaseException as exc:
                    self._depth = 0
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        raise translate_sqlite_error(exc, self.path) from exc
                    raise
                self._depth = 0
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                    raise translate_sqlite_error(exc, self.path) from exc
            finally:
                if relaxed:
                    self._set_synchronous("FULL")

    def _set_synchronous(self, level: str) -> None:
        try:
            self.conn.execute(f"PRAGMA synchronous={level}")
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.path) from exc

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock for a read (autocommit), translating sqlite3 errors."""
        with self.lock:
            self.check_open()
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, self.path) from exc

    def execute(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one statement under the lock and return all rows."""
        with self.reading() as conn:
            return conn.execute(sql, params).fetchall()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        with self.reading() as conn:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """Run ``PRAGMA integrity_check``; ``["ok"]`` means the file is sound."""
        return [row[0] for row in self.execute("PRAGMA integrity_check")]

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()

    def __repr__(self) -> str:
        return f"Database({self.path!r}, durability={self.durability!r})"
