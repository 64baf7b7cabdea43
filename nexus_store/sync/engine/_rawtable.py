"""A collection's table and queue without its pydantic model, for syncing a file alone.

``nexus-store sync --db PATH`` (and a worker process) does not know the app's models.
Pushing needs none: queued payloads are already encoded. Recording acks needs only the
id column and the bookkeeping columns. Applying pulled changes writes each field's JSON
value into the column of the same name:

- ``None`` as NULL, ``bool`` as 0/1, numbers and strings as they are;
- lists and dicts as JSON text (how the store keeps lists, dicts and nested models).

That matches what :class:`~nexus_store.NexusStore` writes for every field except fields
typed ``Any`` or as a union mixing ``str`` with other types, whose strings the store keeps
as JSON text: when the store records its column kinds in ``nx_meta`` (key
``columns:<collection>``, a JSON object of field name to ``"json"``, ``"text"``, ...),
they are used instead of the rule above. Fields the table has no column for are dropped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from ..._changelog import ChangeKind, ChangeLog, ChangeOrigin
from ..._clock import Clock, SystemClock
from ..._database import Database, quote_identifier, validate_identifier
from ..._exceptions import SchemaError
from ..._meta import MetaTable
from ..._quarantine import AppliedChanges, Quarantine, shape_of
from ..._remote import Change
from ..._watch import signal_for
from ...queue import PrioritySyncQueue

__all__ = ["RawCollection", "discover_collections"]

_BOOKKEEPING = frozenset({"_nx_version", "_nx_deleted", "_nx_hlc", "_nx_updated_at"})


def discover_collections(database: Database) -> list[str]:
    """The collections of a store file: tables with the store's bookkeeping columns."""
    with database.reading() as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        found = []
        for name in names:
            columns = {
                row[1] for row in conn.execute(f"PRAGMA table_info({quote_identifier(name)})")
            }
            if columns >= _BOOKKEEPING:
                found.append(name)
    return found


class RawCollection:
    """One collection of a store file, synced without its model.

    Implements :class:`~nexus_store.sync.engine.SyncTarget`.

    Args:
        database: the store's database.
        collection: the table name.
        queue: the queue to use (one per database is enough; a new one by default).
        clock: where time is read.

    Raises:
        SchemaError: no such table, or not a table made by a store.
    """

    def __init__(
        self,
        database: Database,
        collection: str,
        *,
        queue: PrioritySyncQueue | None = None,
        clock: Clock | None = None,
    ) -> None:
        validate_identifier(collection, what="collection")
        self._db = database
        self._collection = collection
        self.clock: Clock = clock or SystemClock()
        self._queue = queue or PrioritySyncQueue(database, clock=self.clock)
        self._log = ChangeLog()
        with database.transaction() as conn:
            ChangeLog.ensure_schema(conn)  # a file from an older version may lack nx_watchers
            Quarantine.ensure_schema(conn)
        with database.reading() as conn:
            info = conn.execute(f"PRAGMA table_info({quote_identifier(collection)})").fetchall()
            kinds_json = _meta(conn, f"columns:{collection}")
            required_json = _meta(conn, f"required:{collection}")
        if not info:
            raise SchemaError(f"{database.path}: no collection table {collection!r}")
        columns = {row[1]: str(row[2]).upper() for row in info}
        keys = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]
        if not set(columns) >= _BOOKKEEPING or len(keys) != 1:
            raise SchemaError(f"{database.path}: table {collection!r} was not made by a store")
        self._id = keys[0]
        self._fields = [name for name in columns if name not in _BOOKKEEPING]
        self._json_fields: set[str] = set()
        self._kinds: dict[str, str] = {}
        if kinds_json:
            kinds = json.loads(kinds_json)
            self._json_fields = {name for name, kind in kinds.items() if kind == "json"}
            self._kinds = {str(name): str(kind) for name, kind in kinds.items()}
        self._required: list[str] = json.loads(required_json) if required_json else []
        self._shape = shape_of("raw", kinds_json, required_json)
        table, idq = quote_identifier(collection), quote_identifier(self._id)
        cols = [quote_identifier(f) for f in self._fields]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != idq)
        self._upsert_sql = (
            f"INSERT INTO {table} ({', '.join(cols)}, _nx_version, _nx_deleted, _nx_hlc, "
            f"_nx_updated_at) VALUES ({', '.join('?' for _ in cols)}, ?, 0, ?, ?) "
            f"ON CONFLICT({idq}) DO UPDATE SET {updates + ', ' if updates else ''}"
            "_nx_version = excluded._nx_version, _nx_deleted = 0, _nx_hlc = excluded._nx_hlc, "
            "_nx_updated_at = excluded._nx_updated_at"
        )
        self._tombstone_sql = (
            f"INSERT INTO {table} ({idq}, _nx_version, _nx_deleted, _nx_hlc, _nx_updated_at) "
            f"VALUES (?, ?, 1, ?, ?) ON CONFLICT({idq}) DO UPDATE SET "
            "_nx_version = excluded._nx_version, _nx_deleted = 1, _nx_hlc = excluded._nx_hlc, "
            "_nx_updated_at = excluded._nx_updated_at"
        )
        self._version_sql = f"SELECT _nx_version FROM {table} WHERE {idq} = ?"
        self._ack_sql = f"UPDATE {table} SET _nx_version = ? WHERE {idq} = ? AND _nx_version < ?"

    # -- SyncTarget ------------------------------------------------------------------------

    @property
    def collection(self) -> str:
        """The table name."""
        return self._collection

    @property
    def queue(self) -> PrioritySyncQueue:
        """The file's sync queue."""
        return self._queue

    @property
    def database(self) -> Database:
        """The store file."""
        return self._db

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        """Raise the stored server version of an item to ``version``."""
        with self._db.transaction() as conn:
            return conn.execute(self._ack_sql, (version, item_id, version)).rowcount > 0

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        """:meth:`apply_ack` for many items, in one statement."""
        rows = [(version, item_id, version) for item_id, version in acks]
        if not rows:
            return 0
        with self._db.transaction() as conn:
            return conn.executemany(self._ack_sql, rows).rowcount

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        """Apply pulled changes of this collection, in one transaction.

        Skipped: changes of other collections, items with a pending op (unless
        ``overwrite_pending``), and changes not newer than the stored version. A change
        that does not fit the table as its store recorded it (a required field missing,
        a value of the wrong kind, a value SQLite cannot hold) is kept in the quarantine.
        """
        return self.apply_pulled(changes, overwrite_pending=overwrite_pending).applied

    def apply_pulled(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> AppliedChanges:
        """:meth:`apply_remote_changes`, also saying how many changes were quarantined."""
        applied: list[Change] = []
        quarantined = 0
        now = self.clock.now()
        with self._db.transaction() as conn:
            record = self._log.recorder(conn)
            for change in changes:
                if change.collection != self._collection:
                    continue
                key = change.item_id
                if not overwrite_pending and self._queue.is_pending(self._collection, key):
                    continue
                row = conn.execute(self._version_sql, (key,)).fetchone()
                if row is not None and (type(row[0]) is not int or row[0] >= change.version):
                    continue
                problem = None if change.deleted else self._problem(change.data)
                if problem is None:
                    try:
                        kind = self._write(conn, change, now)
                    except (OverflowError, UnicodeEncodeError) as exc:
                        problem = f"a value SQLite cannot store: {exc}"
                if problem is not None:
                    if Quarantine.keep(conn, change, problem, self._shape, now):
                        quarantined += 1
                    continue
                hlc = change.hlc or None
                record(self._collection, key, kind, origin=ChangeOrigin.REMOTE, hlc=hlc, at=now)
                applied.append(change)
            if applied and Quarantine.any_in(conn, self._collection):
                Quarantine.settle(conn, self._collection, ((c.item_id, c.version) for c in applied))
        if applied:
            signal_for(self._db).notify()
        return AppliedChanges(applied, quarantined)

    def _write(self, conn: sqlite3.Connection, change: Change, now: float) -> ChangeKind:
        key = change.item_id
        if change.deleted:
            conn.execute(self._tombstone_sql, (key, change.version, change.hlc, now))
            return ChangeKind.DELETE
        values = self._row_values(key, change.data or {})
        conn.execute(self._upsert_sql, (*values, change.version, change.hlc, now))
        return ChangeKind.UPSERT

    def _problem(self, data: dict[str, Any] | None) -> str | None:
        """Why pulled data does not fit the table as its store recorded it (None: it fits)."""
        if not isinstance(data, dict):
            return "the change carries no record"
        missing = [name for name in self._required if data.get(name) is None]
        if missing:
            return f"required field(s) missing or null: {', '.join(missing)}"
        absent = [name for name in self._kinds if name not in data]
        if absent:
            # Written by another version of the model: only the app's store knows the
            # defaults and migrations that make it fit (it applies it when it opens).
            return f"field(s) absent, written by another version of the model: {', '.join(absent)}"
        for name, kind in self._kinds.items():
            value = data.get(name)
            if value is not None and not _fits(kind, value):
                return f"{name}: {value!r:.40} is not a {kind} value"
        return None

    def pull_cursor(self) -> int:
        """The stored pull cursor (0: never pulled)."""
        with self._db.reading() as conn:
            if _meta(conn, f"pull_cursor:{self._collection}") is None:
                return 0
            return MetaTable.get_int(conn, f"pull_cursor:{self._collection}")

    def set_pull_cursor(self, cursor: int) -> None:
        """Store the pull cursor (joining the caller's transaction)."""
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"a pull cursor is a non-negative integer, not {cursor!r}")
        with self._db.transaction() as conn:
            conn.execute(MetaTable.DDL)
            MetaTable.set(conn, f"pull_cursor:{self._collection}", cursor)

    # -- conversion ----------------------------------------------------------------------------

    def _row_values(self, key: str | int, data: Mapping[str, Any]) -> list[Any]:
        values: list[Any] = []
        for name in self._fields:
            if name == self._id:
                values.append(key)
                continue
            value = data.get(name)
            if value is None:
                values.append(None)
            elif name in self._json_fields or isinstance(value, dict | list):
                values.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
            elif isinstance(value, bool):
                values.append(int(value))
            else:
                values.append(value)
        return values

    def __repr__(self) -> str:
        return f"RawCollection({self._db.path!r}, {self._collection!r})"


def _fits(kind: str, value: Any) -> bool:
    """Whether a JSON value fits a column kind recorded by the store."""
    if kind == "integer":
        return type(value) is int
    if kind == "boolean":
        return type(value) is bool
    if kind == "real":
        return type(value) in (int, float)
    if kind == "text":
        return type(value) is str
    return True


def _meta(conn: sqlite3.Connection, key: str) -> Any:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_meta'"
    ).fetchone()
    if exists is None:
        return None
    return MetaTable.get(conn, key)
