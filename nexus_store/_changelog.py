"""``nx_changes``: the change log of a database file, written in each write's transaction.

What a change is (:class:`LocalChange`: its kind and origin) and where it is kept. Every
local write and every applied pulled change appends a row (collection, item id,
kind, origin) in the transaction of the write itself, so a reader never sees a change
before its data. The log keeps the last :data:`CHANGE_LOG_KEEP` rows; rows are pruned
every :data:`_PRUNE_EVERY` appends. :class:`~nexus_store.ChangeStream` reads it
(:mod:`._watch`).
"""

from __future__ import annotations

import enum
import functools
import itertools
import os
import sqlite3
import time
from typing import Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from ._exceptions import CorruptDatabaseError

__all__ = [
    "CHANGE_LOG_KEEP",
    "ChangeKind",
    "ChangeLog",
    "ChangeOrigin",
    "ChangeRecorder",
    "LocalChange",
]


class ChangeKind(enum.StrEnum):
    """What happened to an item."""

    UPSERT = "upsert"
    DELETE = "delete"


class ChangeOrigin(enum.StrEnum):
    """Where a change came from."""

    LOCAL = "local"
    """A save or delete on this device."""
    REMOTE = "remote"
    """A change pulled from the server and applied by a sync run."""


class LocalChange(BaseModel):
    """One committed change to an item of the local store."""

    model_config = ConfigDict(frozen=True)

    seq: int
    """Position in the database's change log (increases with every change)."""
    collection: str
    item_id: str | int
    kind: ChangeKind
    origin: ChangeOrigin
    hlc: str | None = None
    """The hybrid logical clock stamp of the write."""
    at: float
    """When it was written (seconds since the epoch, from the store's clock)."""


CHANGE_LOG_KEEP = 10_000
"""How many of the newest change-log rows are kept."""
_PRUNE_EVERY = 1_000


class ChangeRecorder(Protocol):
    """Records one change in the current write transaction (see :meth:`ChangeLog.recorder`)."""

    def __call__(
        self,
        collection: str,
        item_id: str | int,
        kind: ChangeKind,
        *,
        origin: ChangeOrigin,
        hlc: str | None,
        at: float,
    ) -> None: ...


def _skip(*_: object, **__: object) -> None:
    """The recorder while nobody watches (takes a :class:`ChangeRecorder`'s arguments)."""


class ChangeLog:
    """The ``nx_changes`` table: append inside a write transaction, read after a seq.

    Writers take a :meth:`recorder` once per transaction and call it for each change;
    streams :meth:`register` and :meth:`unregister` themselves in ``nx_watchers``.
    """

    DDL = (
        "CREATE TABLE IF NOT EXISTS nx_changes ("
        "seq INTEGER PRIMARY KEY, collection TEXT NOT NULL, item_id NOT NULL, "
        "kind TEXT NOT NULL, origin TEXT NOT NULL, hlc TEXT, at REAL NOT NULL)"
    )
    WATCHERS_DDL = (
        "CREATE TABLE IF NOT EXISTS nx_watchers ("
        "id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, at REAL NOT NULL)"
    )
    _INSERT = (
        "INSERT INTO nx_changes (collection, item_id, kind, origin, hlc, at) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    )

    def __init__(self, keep: int = CHANGE_LOG_KEEP) -> None:
        self.keep = keep
        self._appended = itertools.count(1)

    @classmethod
    def ensure_schema(cls, conn: sqlite3.Connection) -> None:
        """Create the tables if needed and drop registrations of processes that are gone."""
        conn.execute(cls.DDL)
        conn.execute(cls.WATCHERS_DDL)
        cls.reap(conn)

    @staticmethod
    def recording(conn: sqlite3.Connection) -> bool:
        """Whether a stream is open on the file (the caller holds the write transaction)."""
        return conn.execute("SELECT 1 FROM nx_watchers LIMIT 1").fetchone() is not None

    def recorder(self, conn: sqlite3.Connection) -> ChangeRecorder:
        """What records this transaction's changes: :meth:`append` while a stream is open
        on the file, otherwise nothing. Ask once per transaction (it reads ``nx_watchers``).
        """
        if not self.recording(conn):
            return _skip
        return functools.partial(self.append, conn)

    @classmethod
    def register(cls, conn: sqlite3.Connection) -> tuple[int, int]:
        """Register a stream of this process; return its id and the newest seq now.

        Inside the caller's write transaction: every later commit sees the registration.
        """
        cls.reap(conn)
        cursor = conn.execute(
            "INSERT INTO nx_watchers (pid, at) VALUES (?, ?)", (os.getpid(), time.time())
        )
        return int(cursor.lastrowid or 0), cls.last_seq(conn)

    @staticmethod
    def unregister(conn: sqlite3.Connection, watcher_id: int) -> None:
        """Remove a stream's registration."""
        conn.execute("DELETE FROM nx_watchers WHERE id = ?", (watcher_id,))

    @staticmethod
    def reap(conn: sqlite3.Connection) -> None:
        """Remove the registrations of processes that no longer run."""
        own = os.getpid()
        rows = conn.execute("SELECT id, pid FROM nx_watchers WHERE pid != ?", (own,)).fetchall()
        gone = [(watcher_id,) for watcher_id, pid in rows if not _alive(pid)]
        if gone:
            conn.executemany("DELETE FROM nx_watchers WHERE id = ?", gone)

    def append(
        self,
        conn: sqlite3.Connection,
        collection: str,
        item_id: str | int,
        kind: ChangeKind,
        *,
        origin: ChangeOrigin,
        hlc: str | None,
        at: float,
    ) -> None:
        """Record one change (the caller holds the write transaction)."""
        conn.execute(self._INSERT, (collection, item_id, kind.value, origin.value, hlc, at))
        if next(self._appended) % _PRUNE_EVERY == 0:
            # seq is the rowid: only the oldest rows go, so seqs never repeat.
            conn.execute(
                "DELETE FROM nx_changes WHERE seq <= (SELECT max(seq) FROM nx_changes) - ?",
                (self.keep,),
            )

    @staticmethod
    def last_seq(conn: sqlite3.Connection) -> int:
        """The newest seq in the log (0 if empty)."""
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM nx_changes").fetchone()[0])

    @staticmethod
    def read(
        conn: sqlite3.Connection, collection: str | None, after: int, limit: int
    ) -> tuple[list[LocalChange], int]:
        """Changes after seq ``after`` (of one collection, or all), and the oldest seq kept."""
        first = conn.execute("SELECT min(seq) FROM nx_changes").fetchone()[0]
        if collection is None:
            rows = conn.execute(
                "SELECT seq, collection, item_id, kind, origin, hlc, at FROM nx_changes "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT seq, collection, item_id, kind, origin, hlc, at FROM nx_changes "
                "WHERE seq > ? AND collection = ? ORDER BY seq LIMIT ?",
                (after, collection, limit),
            ).fetchall()
        changes = []
        for r in rows:
            try:
                changes.append(
                    LocalChange(
                        seq=r[0],
                        collection=r[1],
                        item_id=r[2],
                        kind=ChangeKind(r[3]),
                        origin=ChangeOrigin(r[4]),
                        hlc=r[5],
                        at=r[6],
                    )
                )
            except (ValueError, ValidationError) as exc:
                detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
                raise CorruptDatabaseError(
                    f"nx_changes row seq={r[0]!r:.20} is damaged: {detail}"
                ) from None
        if first is not None and type(first) is not int:
            raise CorruptDatabaseError(f"nx_changes holds a seq that is not an integer: {first!r}")
        return changes, first or 0


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine, as WAL mode requires)."""
    if pid <= 0:  # not a process id (0 and below name process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OSError:  # pragma: no cover - an id the OS refuses outright
        return False
    return True
