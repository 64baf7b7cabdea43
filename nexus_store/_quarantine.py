"""The quarantine: pulled changes that could not be applied locally, kept until they can be.

A pulled change that does not fit the local model (a field the model requires is missing,
a value of the wrong type, an id the id field refuses) must not be dropped: the pull cursor
moves past it, so it would never come again. It is kept instead, in the table
``nx_quarantine`` of the store's file, in the same transaction that moves the cursor: the
raw change (encoded by :mod:`._codec`), the reason, and the *shape* it failed against (a
fingerprint of the model, its schema version and its migrations). One row per item: a
newer change of the item replaces an older one; a newer change that applies removes it.

Quarantined changes are tried again whenever the shape differs from the one they failed
against: a store opened with a fixed model, a migration registered, a sync run starting.
They are applied by the usual rules then (never over a pending local op, never over a newer
version) or, failing again, stay with the new reason.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from . import _codec
from ._exceptions import CodecError, CorruptDatabaseError
from ._remote import Change

__all__ = ["AppliedChanges", "Quarantine", "QuarantinedChange", "decode_kept", "shape_of"]

_TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_quarantine'"
_COLUMNS = "id, collection, item_id, version, change, reason, attempts, created_at, updated_at"


class QuarantinedChange(BaseModel):
    """A pulled change kept because it could not be applied locally."""

    model_config = ConfigDict(frozen=True)

    id: int
    """The row's id (for :meth:`~nexus_store.NexusStore.discard_quarantined`)."""
    change: Change
    """The change as the server sent it."""
    reason: str
    """Why it could not be applied (the last time it was tried)."""
    attempts: int
    """How many times it was tried."""
    created_at: float
    updated_at: float


class AppliedChanges(NamedTuple):
    """What applying a page of pulled changes did."""

    applied: list[Change]
    """The changes applied to the local table, in order."""
    quarantined: int
    """Changes that could not be applied and were kept in the quarantine."""


def shape_of(*parts: Any) -> str:
    """A short fingerprint of what decides whether a change fits (model, versions, steps)."""
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Quarantine:
    """The ``nx_quarantine`` table (every method runs on the caller's connection)."""

    DDL = (
        "CREATE TABLE IF NOT EXISTS nx_quarantine ("
        "id INTEGER PRIMARY KEY, collection TEXT NOT NULL, item_id NOT NULL, "
        "version INTEGER NOT NULL, change NOT NULL, reason TEXT NOT NULL, "
        "shape TEXT NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL, "
        "updated_at REAL NOT NULL, UNIQUE (collection, item_id))"
    )

    @classmethod
    def ensure_schema(cls, conn: sqlite3.Connection) -> None:
        """Create the table if needed (inside a write transaction)."""
        conn.execute(cls.DDL)

    @staticmethod
    def exists(conn: sqlite3.Connection) -> bool:
        """Whether the file has a quarantine table (a file of an older version may not)."""
        return conn.execute(_TABLE_EXISTS).fetchone() is not None

    @staticmethod
    def keep(conn: sqlite3.Connection, change: Change, reason: str, shape: str, now: float) -> bool:
        """Keep a change that failed (replacing an older one of the same item).

        Returns:
            False if a newer change of the item is kept already (this one is stale).
        """
        row = conn.execute(
            "SELECT version FROM nx_quarantine WHERE collection = ? AND item_id = ?",
            (change.collection, change.item_id),
        ).fetchone()
        if row is not None and row[0] > change.version:
            return False
        encoded = _encode(change)
        conn.execute(
            "INSERT INTO nx_quarantine (collection, item_id, version, change, reason, shape, "
            "attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) "
            "ON CONFLICT (collection, item_id) DO UPDATE SET version = excluded.version, "
            "change = excluded.change, reason = excluded.reason, shape = excluded.shape, "
            "attempts = attempts + 1, updated_at = excluded.updated_at",
            (change.collection, change.item_id, change.version, encoded, reason, shape, now, now),
        )
        return True

    @staticmethod
    def any_in(conn: sqlite3.Connection, collection: str) -> bool:
        """Whether the collection has quarantined changes (the table must exist)."""
        row = conn.execute(
            "SELECT 1 FROM nx_quarantine WHERE collection = ? LIMIT 1", (collection,)
        ).fetchone()
        return row is not None

    @staticmethod
    def settle(
        conn: sqlite3.Connection, collection: str, item_ids: Iterable[tuple[Any, int]]
    ) -> None:
        """Forget kept changes that ``(item_id, version)`` pairs applied or superseded."""
        conn.executemany(
            "DELETE FROM nx_quarantine WHERE collection = ? AND item_id = ? AND version <= ?",
            [(collection, item_id, version) for item_id, version in item_ids],
        )

    @staticmethod
    def due(conn: sqlite3.Connection, collection: str, shape: str) -> list[tuple[int, Change]]:
        """The kept changes of a collection that failed against another shape, with their
        row ids, oldest first."""
        rows = conn.execute(
            "SELECT id, change FROM nx_quarantine WHERE collection = ? AND shape != ? ORDER BY id",
            (collection, shape),
        ).fetchall()
        return [(row[0], decode_kept(row[0], row[1])) for row in rows]

    @staticmethod
    def forget(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
        """Delete kept changes by row id; how many were deleted."""
        return conn.executemany(
            "DELETE FROM nx_quarantine WHERE id = ?", [(i,) for i in ids]
        ).rowcount

    @staticmethod
    def count(conn: sqlite3.Connection, collection: str | None = None) -> int:
        """How many changes are kept (of one collection, or all); 0 if there is no table."""
        if conn.execute(_TABLE_EXISTS).fetchone() is None:
            return 0
        row = conn.execute(
            "SELECT count(*) FROM nx_quarantine WHERE ?1 IS NULL OR collection = ?1",
            (collection,),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def list(conn: sqlite3.Connection, collection: str | None = None) -> list[QuarantinedChange]:
        """The kept changes (of one collection, or all), oldest first."""
        if conn.execute(_TABLE_EXISTS).fetchone() is None:
            return []
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM nx_quarantine WHERE ?1 IS NULL OR collection = ?1 ORDER BY id",
            (collection,),
        ).fetchall()
        kept = []
        for row in rows:
            try:
                kept.append(
                    QuarantinedChange(
                        id=row[0],
                        change=decode_kept(row[0], row[4]),
                        reason=row[5],
                        attempts=row[6],
                        created_at=row[7],
                        updated_at=row[8],
                    )
                )
            except ValidationError as exc:
                raise CorruptDatabaseError(
                    f"nx_quarantine row id={row[0]!r:.20} is damaged: {exc.errors()[0]['msg']}"
                ) from None
        return kept


def _encode(change: Change) -> bytes | str:
    """A change as kept: msgpack bytes, or JSON text for values msgpack cannot carry
    (integers beyond 64 bits), so that whatever arrived is kept."""
    value = change.model_dump()
    try:
        return _codec.encode(value)
    except CodecError:
        return json.dumps(value, default=repr)


def decode_kept(row_id: Any, data: Any) -> Change:
    """The change kept in a row (msgpack bytes or JSON text).

    Raises:
        CorruptDatabaseError: the row does not hold an encoded change.
    """
    try:
        if isinstance(data, str):
            return Change.model_validate(json.loads(data))
        if not isinstance(data, bytes):
            raise CodecError(f"{type(data).__name__}, not an encoded change")
        return Change.model_validate(_codec.decode(data))
    except (CodecError, ValidationError, ValueError) as exc:
        raise CorruptDatabaseError(
            f"nx_quarantine row id={row_id!r:.20} is damaged: the kept change does not decode "
            f"({exc})"
        ) from None
