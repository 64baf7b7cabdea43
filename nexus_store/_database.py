"""One SQLite connection, shared by a store's tables and its sync queue.

The item write and its queue op must commit in one transaction, so the local tables
(:mod:`._local`) and the queue (:mod:`.queue`) use the same :class:`Database`: one
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
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from ._exceptions import CorruptDatabaseError, DatabaseError, SchemaError, StoreClosedError

__all__ = [
    "Database",
    "Durability",
    "SqliteFailure",
    "Verify",
    "is_open_database_file",
    "quote_identifier",
    "validate_identifier",
]

Durability = Literal["full", "normal"]
"""``"full"``: ``synchronous=FULL``, an acknowledged save survives power loss (default).
``"normal"``: ``synchronous=NORMAL`` in WAL mode, faster; an acknowledged save survives an
application crash but the last transactions may roll back after power loss or an OS crash."""

Verify = Literal["full", "quick", "none"]
"""How a :class:`Database` checks a file when it opens it: ``"full"`` runs SQLite's
``integrity_check``, ``"quick"`` its ``quick_check``, ``"none"`` nothing."""

_MAX_PROBLEMS = 100
# Files (device, inode) that an open Database of this process verified, with how many
# Database objects have each open: the first to open a file checks it, the others trust it.
_open_files: dict[tuple[int, int], int] = {}
_open_files_lock = threading.Lock()


def _file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of a file, through ``stat()`` (which opens nothing)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def is_open_database_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a database file (or its ``-wal``, ``-shm`` or ``-journal``) that
    a :class:`Database` of this process has open: reading it with anything but SQLite
    would drop SQLite's locks when that descriptor closes (see the module docstring)."""
    text = os.fspath(path)
    candidates = [text]
    for suffix in ("-wal", "-shm", "-journal"):
        if text.endswith(suffix):
            candidates.append(text[: -len(suffix)])
    with _open_files_lock:
        return any(
            (found := _file_identity(name)) is not None and found in _open_files
            for name in candidates
        )


_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_RESERVED_PREFIXES = ("sqlite_", "_nx_", "nx_")
_CORRUPT_MARKERS = (
    "file is not a database",
    "malformed",
    "file is encrypted",
    "corrupt",
    "could not decode to utf-8",  # stored text that is not UTF-8
)


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


SqliteFailure = (sqlite3.Error, UnicodeDecodeError)
"""What reading or writing through ``sqlite3`` can raise: its errors, and
``UnicodeDecodeError`` for stored text that is not UTF-8 (a damaged value)."""


def translate_sqlite_error(exc: sqlite3.Error | UnicodeDecodeError, path: str) -> DatabaseError:
    """Map an ``sqlite3`` exception to our tree (corrupt vs other database errors)."""
    if isinstance(exc, UnicodeDecodeError):
        return CorruptDatabaseError(f"{path}: a stored text value is not UTF-8 (damaged): {exc}")
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and any(m in text for m in _CORRUPT_MARKERS):
        return CorruptDatabaseError(f"{path}: not an SQLite database or damaged ({exc})")
    return DatabaseError(f"{path}: {exc}")


class Database:
    """A thread-safe SQLite connection with explicit transactions.

    Opening a file verifies it once per process (see ``verify``): a damaged file is
    reported when it is opened, not after writes have been added to it. Further
    connections to a file that an open :class:`Database` of this process verified skip the
    check.

    Args:
        path: a file path, or ``":memory:"``.
        durability: ``"full"`` (default) or ``"normal"``; see :data:`Durability`.
        busy_timeout: seconds to wait for another process's write lock.
        verify: ``"full"`` (default): ``PRAGMA integrity_check`` (about 10 ms per MB of
            file); ``"quick"``: ``PRAGMA quick_check`` (a third of that; does not compare
            indexes with their tables); ``"none"``: no check, e.g. to read what is still
            readable from a damaged file.
        readonly: open without writing anything (no WAL switch; writes fail).
        vfs: the name of a registered SQLite VFS to open the file through (tests use one
            that simulates power loss).

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
        verify: Verify = "full",
        readonly: bool = False,
        vfs: str | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        if verify not in ("full", "quick", "none"):
            raise ValueError(f"verify must be 'full', 'quick' or 'none', not {verify!r}")
        self.path = str(path)
        self.durability: Durability = durability
        self.readonly = readonly
        self.lock = threading.RLock()
        self._depth = 0
        self.wrote_at = float("-inf")
        """``time.monotonic()`` when this connection last began or ended a write (a
        transaction, a checkpoint): a watcher of the file tells its own writes from
        others' by it (see :mod:`nexus_store.sync._wal_watch`)."""
        self._closed = False
        self._identity: tuple[int, int] | None = None
        on_disk = self.path not in (":memory:", "")
        target: str = self.path
        if on_disk and (readonly or vfs is not None):
            query = {"mode": "ro"} if readonly else {}
            if vfs is not None:
                query["vfs"] = vfs
            target = Path(self.path).absolute().as_uri() + "?" + urllib.parse.urlencode(query)
        try:
            self.conn = sqlite3.connect(
                target,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
                uri=target is not self.path,
            )
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.path) from exc
        try:
            # Reading the schema is what detects "file is not a database".
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if on_disk:
                _refuse_one_byte_file(self.conn, self.path)
                if verify != "none":
                    self._verify(verify)
                if not readonly:
                    mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise DatabaseError(f"{self.path}: cannot enable WAL mode (got {mode!r})")
            sync = "FULL" if durability == "full" else "NORMAL"
            self.conn.execute(f"PRAGMA synchronous={sync}")
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except SqliteFailure as exc:
            self._forget()
            self.conn.close()
            raise translate_sqlite_error(exc, self.path) from exc
        except DatabaseError:
            self._forget()
            self.conn.close()
            raise
        self.utils = sqlite_utils.Database(self.conn)
        """sqlite-utils view of the connection, for schema work (not for the hot path)."""

    def _verify(self, level: Verify) -> None:
        """Check the file once while this process has it open (see the class docstring)."""
        identity = _file_identity(self.path)
        with _open_files_lock:
            known = identity is not None and _open_files.get(identity, 0) > 0
            if identity is not None:
                _open_files[identity] = _open_files.get(identity, 0) + 1
        self._identity = identity
        if known:
            return
        pragma = "integrity_check" if level == "full" else "quick_check"
        problems = [row[0] for row in self.conn.execute(f"PRAGMA {pragma}({_MAX_PROBLEMS})")]
        if problems != ["ok"]:
            shown = "; ".join(str(p) for p in problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise CorruptDatabaseError(
                f"{self.path}: the file is damaged: {shown}{more}. `nexus-store check --db "
                "PATH` reports it in full; Database(path, verify='none') opens it anyway to "
                "read what is still readable"
            )

    def _forget(self) -> None:
        """This connection no longer counts as having the file open (verified)."""
        identity, self._identity = self._identity, None
        if identity is None:
            return
        with _open_files_lock:
            left = _open_files.get(identity, 0) - 1
            if left > 0:
                _open_files[identity] = left
            else:
                _open_files.pop(identity, None)

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
                self.wrote_at = time.monotonic()
                try:
                    yield self.conn
                except BaseException as exc:
                    self._depth = 0
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                    if isinstance(exc, SqliteFailure):
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
                self.wrote_at = time.monotonic()
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
            except SqliteFailure as exc:
                raise translate_sqlite_error(exc, self.path) from exc

    def execute(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one statement under the lock and return all rows."""
        with self.reading() as conn:
            return conn.execute(sql, params).fetchall()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        with self.reading() as conn:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the ``-wal`` file holds into the database file, without waiting for
        anyone (``PRAGMA wal_checkpoint(PASSIVE)``).

        SQLite checkpoints on its own at the end of a commit that finds the ``-wal`` file
        over 1,000 pages, in the committing call, fsyncs included. A process that calls
        this often (a sync worker beside the app, on its own connection) keeps the file
        under that size, so the app's saves rarely pay for a checkpoint.

        Returns:
            ``(frames in the -wal file, frames copied)``; ``(0, 0)`` for ``:memory:``.
        """
        with self.reading() as conn:
            self.wrote_at = time.monotonic()
            try:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                self.wrote_at = time.monotonic()
        if row is None or row[1] < 0:
            return 0, 0
        return int(row[1]), int(row[2])

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
            self._forget()

    def __repr__(self) -> str:
        return f"Database({self.path!r}, durability={self.durability!r})"
