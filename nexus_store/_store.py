"""``NexusStore[T, ID]``: typed records in a local SQLite file, every write queued for sync.

The store is a thin facade over three parts sharing one
:class:`~nexus_store._database.Database` (one connection, one lock):

- the collection's table (:mod:`._local`),
- the priority sync queue (:mod:`._queue`), reachable as :attr:`NexusStore.queue`,
- the change log that :meth:`NexusStore.watch` follows (:mod:`._watch`).

A save validates the item, then in one ``BEGIN IMMEDIATE`` transaction writes the row,
enqueues its op and appends to the change log; it returns only after ``COMMIT``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Self

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from . import _unclosed
from ._clock import Clock, SystemClock
from ._database import Database, Durability, quote_identifier
from ._exceptions import (
    CorruptDatabaseError,
    ItemValidationError,
    LifecycleError,
    MigrationError,
    SchemaError,
    StoreClosedError,
    SyncError,
)
from ._hlc import ClockReading, HybridLogicalClock
from ._local import (
    ItemKey,
    LocalTable,
    MetaTable,
    PreparedItem,
    TableSpec,
    remote_change_action,
    snake_case,
)
from ._loop import STOP_TIMEOUT, close_on_bound_loop, in_event_loop, shared_loop
from ._migrations import Migrations, run_steps
from ._priority import SyncPriority
from ._quarantine import AppliedChanges, Quarantine, QuarantinedChange, shape_of
from ._remote import Change, RemoteBackend
from ._watch import ChangeKind, ChangeLog, ChangeOrigin, ChangeStream, signal_for
from .queue import OpKind, OpState, PrioritySyncQueue, QueuedOp

if TYPE_CHECKING:
    from .sync.device._device import DeviceStateProvider
    from .sync.engine._progress import SyncSummary

__all__ = ["NexusStore"]

T = TypeVar("T", bound=BaseModel)
# A default (PEP 696) lets NexusStore("app.db", model=Note) type-check without naming ID.
ID = TypeVar("ID", default=Any)

logger = logging.getLogger("nexus_store")


class _Layout(NamedTuple):
    """A collection table as it was before a store opened it."""

    columns: list[str]
    kinds: dict[str, str]
    """The column kinds recorded then (``columns:<collection>`` in nx_meta)."""
    version: int
    """The schema version of its rows."""


class NexusStore(Generic[T, ID]):
    """A collection of pydantic models in a local SQLite file, with a persisted sync queue.

    ``T`` is the model and ``ID`` the type of its id field. Every method is synchronous and
    thread-safe; writes return after their transaction committed.

    Args:
        path: the database file, ``":memory:"``, or an open
            :class:`~nexus_store._database.Database` to share one connection between
            stores (the store then does not close it, and ``durability`` is the database's).
        model: the pydantic model class stored in this collection.
        id_field: the model field that identifies an item (a string or integer type).
        collection: the table name (default: the model's name in snake_case).
        durability: ``"full"`` (default: an acknowledged save survives power loss) or
            ``"normal"`` (faster; the last commits may be lost on power loss or OS crash,
            never on an application crash).
        backend: where :meth:`sync` sends this store's ops (and where a background sync
            service sends them, unless it is given another).
        owns_backend: close ``backend`` with the store (the default); ``False`` when the
            backend is shared or closed by the caller.
        coalesce: merge a new write into the item's pending op (default), or keep every op.
        schema_version: the model's version, stored with each queued payload and recorded
            in the file; opening a file whose rows are of an older version upgrades them.
        migrations: the steps between versions (see :class:`~nexus_store.Migrations`);
            registered with the queue, run on local rows of an older version when the store
            opens, tried on pulled changes that do not fit, and recorded in the file by
            import path so that other processes (a worker) find them.
        clock: where time is read (a :class:`~nexus_store.FakeClock` in tests).
        max_attempts: failed sends after which an op is dead-lettered.

    Raises:
        SchemaError: the model, its field names or the collection name cannot be stored
            safely, or the existing table does not fit the model.
        CorruptDatabaseError: the file is not an SQLite database, or is damaged.
        DatabaseError: the file cannot be opened.
    """

    def __init__(
        self,
        path: str | Path | Database,
        *,
        model: type[T],
        id_field: str = "id",
        collection: str | None = None,
        durability: Durability = "full",
        backend: RemoteBackend | None = None,
        owns_backend: bool = True,
        coalesce: bool = True,
        schema_version: int = 1,
        clock: Clock | None = None,
        max_attempts: int = 10,
        migrations: Migrations | None = None,
    ) -> None:
        name = collection if collection is not None else snake_case(getattr(model, "__name__", ""))
        # Everything about the model is checked before the file is touched.
        spec = TableSpec.from_model(model, id_field=id_field, table=name)
        if isinstance(schema_version, bool) or not isinstance(schema_version, int):
            raise TypeError("schema_version must be an integer")
        if schema_version < 1:
            raise ValueError("schema_version must be at least 1")
        self.model: type[T] = model
        self.collection = name
        self.id_field = id_field
        self.backend = backend
        """The remote backend the sync engine uses for this store (``None``: none yet)."""
        self.owns_backend = owns_backend
        """Whether :meth:`close` also closes :attr:`backend`."""
        self.coalesce = coalesce
        self.schema_version = schema_version
        self.clock: Clock = clock or SystemClock()
        self._owns_db = not isinstance(path, Database)
        self._db = path if isinstance(path, Database) else Database(path, durability=durability)
        self._closed = False
        self._signal = signal_for(self._db)
        # Weak: a stream its user dropped is collected (and unregisters itself).
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        try:
            self._table: LocalTable[T] = LocalTable(self._db, spec)
            self._meta = MetaTable(self._db)
            self._log = ChangeLog()
            with self._db.transaction() as conn:
                self._meta.ensure_schema(conn)
                layout = self._layout_before(conn)
                self._table.ensure_schema(conn, migrating=self._has_steps_for(layout, migrations))
                self._migrate_rows(conn, layout, migrations)
                # Tools that sync the file without the model read how each field is stored.
                MetaTable.set(conn, f"columns:{name}", spec.kinds_json())
                MetaTable.set(conn, f"required:{name}", spec.required_json())
                MetaTable.set(conn, f"schema_version:{name}", schema_version)
                if migrations is not None and migrations.import_path is not None:
                    MetaTable.set(conn, "migrations", migrations.import_path)
                ChangeLog.ensure_schema(conn)
                Quarantine.ensure_schema(conn)
            # One node id per store object: two processes writing one file never issue the
            # same stamp.
            self._hlc = HybridLogicalClock(uuid.uuid4().hex[:12], clock=self.clock)
            self._queue = PrioritySyncQueue(self._db, clock=self.clock, max_attempts=max_attempts)
            self._queue.set_schema_version(name, schema_version)
            for (owner, from_version), step in (migrations.steps if migrations else {}).items():
                self._queue.register_migration(owner, from_version, step)
            self._open_migrated()
        except BaseException:
            if self._owns_db:
                self._db.close()
            raise
        self._parts = _StoreParts(
            self._db, self._owns_db, self._queue, self._streams, self._streams_lock
        )
        # Forgotten stores are closed at exit (or when collected), with a ResourceWarning;
        # the backend it owns is closed then too (see close()).
        self._tracked = _unclosed.track(
            self,
            functools.partial(_close_forgotten, self._parts, self._owned_backend),
            f"NexusStore({self._db.path!r}, model={model.__name__})",
        )

    def _layout_before(self, conn: sqlite3.Connection) -> _Layout | None:
        """The table's columns, their recorded kinds and its rows' version, before opening
        changes anything (None: no table yet, or no version recorded)."""
        name = self.collection
        recorded = MetaTable.get(conn, f"schema_version:{name}")
        if recorded is None:
            return None  # a new table, or a file from before versions were recorded
        if type(recorded) is not int or recorded < 1:
            raise CorruptDatabaseError(
                f"nx_meta row key='schema_version:{name}': {recorded!r:.40} is not a version"
            )
        if recorded > self.schema_version:
            raise SchemaError(
                f"{self._db.path}: the {name!r} rows are of schema v{recorded}, newer than this "
                f"model's v{self.schema_version}: open it with the newer model"
            )
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({quote_identifier(name)})")]
        kinds_json = MetaTable.get(conn, f"columns:{name}")
        try:
            kinds = json.loads(kinds_json) if isinstance(kinds_json, str) else {}
        except ValueError:
            kinds = {}
        return _Layout(columns, kinds if isinstance(kinds, dict) else {}, recorded)

    def _has_steps_for(self, layout: _Layout | None, migrations: Migrations | None) -> bool:
        """Whether opening will run migration steps on this collection's stored rows."""
        if layout is None or layout.version >= self.schema_version or not layout.columns:
            return False
        steps = migrations.steps if migrations is not None else {}
        return any(collection == self.collection for collection, _ in steps)

    def _migrate_rows(
        self, conn: sqlite3.Connection, layout: _Layout | None, migrations: Migrations | None
    ) -> None:
        """Upgrade the rows of an older version (in the open's transaction: all or none).

        Raises:
            MigrationError: a step is missing or fails for a row, or its result does not fit
                the model (the row is named; nothing changed).
        """
        if not self._has_steps_for(layout, migrations):
            return  # no steps at all: the change was additive (new fields with defaults)
        assert layout is not None
        assert migrations is not None
        steps = migrations.steps
        collection, old, new = self.collection, layout.version, self.schema_version
        kinds = {**self._table.spec.kinds, **layout.kinds}
        migrated = self._table.migrate_rows(
            conn,
            layout.columns,
            kinds,
            lambda data: run_steps(steps, collection, data, old, new),
        )
        logger.info("migrated %d %s rows from schema v%d to v%d", migrated, collection, old, new)

    def _open_migrated(self) -> None:
        """What opening does after the schema: pulled changes kept in the quarantine under
        another model are tried again."""
        self.retry_quarantined()

    # -- properties ----------------------------------------------------------------------

    @property
    def queue(self) -> PrioritySyncQueue:
        """The priority sync queue this store's writes go to (shared by the whole file)."""
        return self._queue

    @property
    def database(self) -> Database:
        """The database connection the store, its queue and its change log share."""
        return self._db

    @property
    def path(self) -> str:
        """The database file path (or ``":memory:"``)."""
        return self._db.path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self._db.path}: the {self.collection!r} store is closed")

    # -- writes --------------------------------------------------------------------------

    def save(
        self,
        item: T,
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        tag: str | None = None,
    ) -> T:
        """Store an item and queue it for sync, in one transaction.

        Args:
            item: an instance of the store's model (re-validated before writing).
            priority: how urgently the write should reach the remote.
            tag: an optional label carried by the queued op.

        Returns:
            The item as stored (validated), once the transaction has committed.

        Raises:
            ItemValidationError: the item is not a valid instance of the model; nothing
                was written.
            StoreClosedError: the store was closed.
        """
        self._check_open()
        level = SyncPriority.coerce(priority)
        prepared = self._table.prepare(item)
        self._write((prepared,), level, tag)
        return prepared.item

    def save_many(
        self,
        items: Iterable[T],
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        tag: str | None = None,
    ) -> list[T]:
        """Store several items and queue them, all in one transaction (all or nothing).

        Returns:
            The items as stored, in order.

        Raises:
            ItemValidationError: an item is invalid (its position is in the message);
                nothing was written.
            StoreClosedError: the store was closed.
        """
        self._check_open()
        level = SyncPriority.coerce(priority)
        prepared: list[PreparedItem[T]] = []
        for index, item in enumerate(items):
            try:
                prepared.append(self._table.prepare(item))
            except ItemValidationError as exc:
                raise ItemValidationError(f"item {index}: {exc}") from exc
        if prepared:
            self._write(prepared, level, tag, numbered=True)
        return [p.item for p in prepared]

    def _write(
        self,
        prepared: Sequence[PreparedItem[T]],
        priority: SyncPriority,
        tag: str | None,
        *,
        numbered: bool = False,
    ) -> None:
        now = self.clock.now()
        table, queue, log, collection = self._table, self._queue, self._log, self.collection
        with self._db.transaction() as conn:
            record = log.recorder(conn)
            for index, p in enumerate(prepared):
                hlc = self._hlc.now()
                try:
                    base_version = table.write(conn, p, hlc, now)
                except ItemValidationError as exc:
                    if numbered:
                        raise ItemValidationError(f"item {index}: {exc}") from exc
                    raise
                queue._enqueue(
                    collection,
                    p.key,
                    p.payload,
                    OpKind.UPSERT,
                    priority,
                    self.schema_version,
                    base_version,
                    hlc,
                    tag,
                    self.coalesce,
                    build=False,
                )
                record(
                    collection, p.key, ChangeKind.UPSERT, origin=ChangeOrigin.LOCAL, hlc=hlc, at=now
                )
        self._signal.notify()

    def delete(
        self,
        item_id: ID,
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        tag: str | None = None,
    ) -> bool:
        """Delete an item: keep a tombstone row and queue the deletion for sync.

        Returns:
            True if a live item was deleted; False if there was none (nothing is queued).

        Raises:
            ItemValidationError: the id does not fit the model's id field.
            StoreClosedError: the store was closed.
        """
        self._check_open()
        level = SyncPriority.coerce(priority)
        _, key = self._table.key_of(item_id)
        now = self.clock.now()
        with self._db.transaction() as conn:
            hlc = self._hlc.now()
            base_version = self._table.tombstone(conn, key, hlc, now)
            if base_version is None:
                return False
            self._queue.enqueue(
                self.collection,
                key,
                None,
                kind=OpKind.DELETE,
                priority=level,
                schema_version=self.schema_version,
                base_version=base_version,
                hlc=hlc,
                tag=tag,
                coalesce=self.coalesce,
            )
            record = self._log.recorder(conn)
            record(
                self.collection, key, ChangeKind.DELETE, origin=ChangeOrigin.LOCAL, hlc=hlc, at=now
            )
        self._signal.notify()
        return True

    # -- reads ---------------------------------------------------------------------------

    def get(self, item_id: ID) -> T | None:
        """The item with this id, or None if there is none (or it was deleted).

        Raises:
            ItemValidationError: the id does not fit the model's id field.
        """
        self._check_open()
        _, key = self._table.key_of(item_id)
        with self._db.reading() as conn:
            return self._table.get(conn, key)

    def get_many(self, item_ids: Iterable[ID]) -> dict[ID, T]:
        """The items with these ids that exist, keyed by id, in the order asked.

        Ids with no live item are left out, so ``len(result)`` tells how many were found.

        Raises:
            ItemValidationError: an id does not fit the model's id field.
        """
        self._check_open()
        wanted: dict[ItemKey, ID] = {}
        for item_id in item_ids:
            value, key = self._table.key_of(item_id)
            wanted.setdefault(key, value)
        with self._db.reading() as conn:
            found = self._table.get_rows(conn, list(wanted))
        return {value: found[key] for key, value in wanted.items() if key in found}

    def all(self) -> list[T]:
        """Every live item, ordered by id."""
        return self.query()

    def query(
        self,
        where: str | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[T]:
        """Live items matching an SQL condition, as in sqlite-utils' ``rows_where``.

        Args:
            where: an SQL fragment over the model's columns, with ``?`` or ``:name``
                placeholders (e.g. ``"priority > ? and done = 0"``). Scalar fields are
                plain columns; lists, dicts and nested models are JSON text (use SQLite's
                ``json_extract``). Write it in code; pass values through ``params``.
            params: the values for the placeholders.
            order_by: field names, each optionally followed by ``asc`` or ``desc``
                (``"created desc, id"``); default: by id.
            limit: at most this many items.
            offset: skip this many items first.

        Raises:
            ValueError: ``order_by`` names something that is not a field, or a negative
                ``limit``/``offset``.
            DatabaseError: the ``where`` fragment is not valid SQL for this table.
        """
        self._check_open()
        with self._db.reading() as conn:
            return self._table.query(
                conn, where, params, order_by=order_by, limit=limit, offset=offset
            )

    def count(
        self, where: str | None = None, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> int:
        """How many live items match ``where`` (all of them by default); see :meth:`query`."""
        self._check_open()
        with self._db.reading() as conn:
            return self._table.count(conn, where, params)

    # -- queue and changes ---------------------------------------------------------------

    def pending(
        self,
        item_id: ID | None = None,
        *,
        states: Iterable[OpState] | None = None,
        limit: int | None = None,
    ) -> list[QueuedOp]:
        """This collection's queued ops (of one item if ``item_id`` is given), queue order.

        Args:
            item_id: only this item's ops.
            states: only ops in these states (the queue's default otherwise).
            limit: at most this many ops.
        """
        self._check_open()
        key = None if item_id is None else self._table.key_of(item_id)[1]
        return self._queue.pending(
            self.collection,
            key,
            states=None if states is None else list(states),
            limit=limit,
        )

    def is_pending(self, item_id: ID) -> bool:
        """Whether the item still has an op in the queue (not yet acknowledged)."""
        self._check_open()
        return self._queue.is_pending(self.collection, self._table.key_of(item_id)[1])

    def watch(self, *, since: int | None = None, poll_interval: float = 0.05) -> ChangeStream:
        """Follow this collection's committed changes.

        The stream is an iterator and an async iterator of
        :class:`~nexus_store.LocalChange`; it sees writes of this store at once and commits
        of other connections and processes within ``poll_interval`` seconds. It ends when
        closed (``close()``, ``with``/``async with``) or when the store is closed.

        The change log is written only while at least one stream is open on the file (in
        any process); saves with nobody watching skip it.

        Args:
            since: start after this change seq (``stream.last_seq`` of an earlier stream);
                by default only changes committed from now on. Changes committed while no
                stream was open anywhere were not logged and are not replayed.
            poll_interval: seconds between checks for commits by other connections.
        """
        self._check_open()
        stream = ChangeStream(self._db, self.collection, since=since, poll_interval=poll_interval)
        with self._streams_lock:
            self._streams.add(stream)
        return stream

    # -- for the sync engine -------------------------------------------------------------

    def apply_ack(self, item_id: ItemKey, version: int) -> bool:
        """Record that the server stored the item at ``version`` (after its op was acked).

        Args:
            item_id: the id as queued (``QueuedOp.item_id``); other id values are converted.
            version: the server version from the ack.

        Returns:
            True if the stored server version moved forward.
        """
        self._check_open()
        # Acks arrive by the thousand with ids already in stored form: skip re-validation.
        key = item_id if type(item_id) is str or type(item_id) is int else None
        if key is None:
            key = self._table.key_of(item_id)[1]
        with self._db.transaction() as conn:
            return self._table.set_server_version(conn, key, version)

    def apply_acks(self, acks: Iterable[tuple[ItemKey, int]]) -> int:
        """:meth:`apply_ack` for many items at once (one statement, one transaction).

        Args:
            acks: ``(item_id, version)`` pairs, ids as queued.

        Returns:
            How many stored server versions moved forward.
        """
        self._check_open()
        table = self._table
        rows = [
            (
                version,
                item_id
                if type(item_id) is str or type(item_id) is int
                else table.key_of(item_id)[1],
                version,
            )
            for item_id, version in acks
        ]
        if not rows:
            return 0
        with self._db.transaction() as conn:
            return table.set_server_versions(conn, rows)

    def stored_version(self, item_id: ItemKey) -> int | None:
        """The server version stored for an item (tombstones too); None if never stored."""
        self._check_open()
        _, key = self._table.key_of(item_id)
        with self._db.reading() as conn:
            return self._table.stored_version(conn, key)

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        """Apply pulled changes of this collection to the local table, in one transaction.

        A change is skipped when the item still has a queued op (unless
        ``overwrite_pending``, for adopting the server's copy after a conflict), when the
        stored server version is already as new, or when it belongs to another collection.
        A change whose data does not fit the model is kept in the quarantine (see
        :meth:`quarantined`), in the same transaction, and tried again when the model or
        its migrations change.

        Returns:
            The changes that were applied, in order.
        """
        return self.apply_pulled(changes, overwrite_pending=overwrite_pending).applied

    def apply_pulled(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> AppliedChanges:
        """:meth:`apply_remote_changes`, also saying how many changes were quarantined."""
        self._check_open()
        applied, kept = self._apply_pulled(changes, overwrite_pending)
        return AppliedChanges(applied, len(kept))

    def _apply_pulled(
        self, changes: Iterable[Change], overwrite_pending: bool
    ) -> tuple[list[Change], list[Change]]:
        """Apply what fits, quarantine what does not: the applied and the kept changes."""
        candidates, failed = self._sort_pulled(changes)
        applied: list[Change] = []
        kept: list[Change] = []
        if not candidates and not failed:
            return applied, kept
        now = self.clock.now()
        with self._db.transaction() as conn:
            record = self._log.recorder(conn)
            for change, key, prepared in candidates:
                if not self._may_apply(conn, change, key, overwrite_pending):
                    continue
                hlc = self._observed(change.hlc)
                if prepared is None:
                    self._table.tombstone_remote(conn, key, change.version, hlc, now)
                    kind = ChangeKind.DELETE
                else:
                    self._table.write_remote(conn, prepared, change.version, hlc, now)
                    kind = ChangeKind.UPSERT
                record(self.collection, key, kind, origin=ChangeOrigin.REMOTE, hlc=hlc, at=now)
                applied.append(change)
            for change, maybe_key, reason in failed:
                if maybe_key is not None and not self._may_apply(
                    conn, change, maybe_key, overwrite_pending
                ):
                    continue  # it would not have been applied anyway
                if Quarantine.keep(conn, change, reason, self._shape(), now):
                    kept.append(change)
                    logger.warning(
                        "quarantined remote change to %s/%r: %s",
                        self.collection,
                        change.item_id,
                        reason,
                    )
            if applied and Quarantine.any_in(conn, self.collection):
                Quarantine.settle(conn, self.collection, ((c.item_id, c.version) for c in applied))
        if applied:
            self._signal.notify()
        return applied, kept

    def _sort_pulled(
        self, changes: Iterable[Change]
    ) -> tuple[
        list[tuple[Change, ItemKey, PreparedItem[T] | None]],
        list[tuple[Change, ItemKey | None, str]],
    ]:
        """This collection's changes, validated (outside any transaction): those that fit,
        and those that do not with the reason."""
        candidates: list[tuple[Change, ItemKey, PreparedItem[T] | None]] = []
        failed: list[tuple[Change, ItemKey | None, str]] = []
        for change in changes:
            if change.collection != self.collection:
                continue
            key: ItemKey | None = None
            try:
                _, key = self._table.key_of(change.item_id)
                prepared = None if change.deleted else self._prepare_remote(change)
            except (ItemValidationError, ValidationError, MigrationError) as exc:
                failed.append((change, key, " ".join(str(exc).split())[:2000]))
                continue
            candidates.append((change, key, prepared))
        return candidates, failed

    def _may_apply(
        self, conn: sqlite3.Connection, change: Change, key: ItemKey, overwrite_pending: bool
    ) -> bool:
        """The rule for pulled changes: never over a pending op, never over a newer version."""
        pending = not overwrite_pending and self._queue.is_pending(self.collection, key)
        stored = self._table.stored_version(conn, key)
        return remote_change_action(change.version, stored, has_pending_op=pending) == "apply"

    def _prepare_remote(self, change: Change) -> PreparedItem[T]:
        """Validate a pulled item. Data that does not fit is tried through the migration
        steps, from the newest older version down (a change carries no version: an older
        client may have sent it), before the failure is final."""
        data = change.data or {}
        # Fields this model does not have are the mark of another (older) shape.
        foreign = self.schema_version > 1 and not set(data) <= self.model.model_fields.keys()
        if foreign:
            upgraded = self._upgrade_pulled(data)
            if upgraded is not None:
                return self._table.prepare(upgraded)
        try:
            item = self.model.model_validate(data)
        except ValidationError:
            upgraded = None if foreign else self._upgrade_pulled(data)
            if upgraded is None:
                raise
            item = upgraded
        return self._table.prepare(item)

    def _upgrade_pulled(self, data: dict[str, Any]) -> T | None:
        """The item that ``data`` of some older version becomes, if steps make it fit with
        no field left over."""
        steps = self._queue.migration_step_map()
        collection = self.collection
        for version in range(self.schema_version - 1, 0, -1):
            if (collection, version) not in steps:
                break
            try:
                upgraded = run_steps(steps, collection, data, version, self.schema_version)
                if not set(upgraded) <= self.model.model_fields.keys():
                    continue
                return self.model.model_validate(upgraded)
            except (MigrationError, ValidationError):
                continue
        return None

    def _shape(self) -> str:
        """What decides whether a pulled change fits: the model, its version, its steps."""
        steps = sorted(v for c, v in self._queue.migration_steps() if c == self.collection)
        try:
            schema: Any = self.model.model_json_schema()
        except Exception:  # a model pydantic cannot describe: its fields' annotations
            schema = {name: repr(f.annotation) for name, f in self.model.model_fields.items()}
        return shape_of(self.model.__qualname__, schema, self.schema_version, steps)

    def quarantined(self) -> list[QuarantinedChange]:
        """Pulled changes of this collection that could not be applied, with the reasons."""
        self._check_open()
        with self._db.reading() as conn:
            return Quarantine.list(conn, self.collection)

    def retry_quarantined(self, *, force: bool = False) -> int:
        """Try the quarantined changes again (those that failed with another model, or all
        with ``force``). Those that fit now are applied by the usual rules (never over a
        pending op or a newer version; a change those rules skip is dropped); the others
        stay, with the new reason.

        Returns:
            How many were applied.
        """
        self._check_open()
        with self._db.reading() as conn:
            if not Quarantine.exists(conn) or not Quarantine.any_in(conn, self.collection):
                return 0
        shape = "" if force else self._shape()
        with self._db.transaction() as conn:
            due = Quarantine.due(conn, self.collection, shape)
            if not due:
                return 0
            applied, kept = self._apply_pulled([change for _, change in due], False)
            # Applied ones are gone already; failed ones were kept again (attempts counted);
            # the rest were skipped by the usual rules (a pending op, a newer version): gone.
            done = {(c.item_id, c.version) for c in (*applied, *kept)}
            Quarantine.forget(
                conn, [row_id for row_id, c in due if (c.item_id, c.version) not in done]
            )
        return len(applied)

    def discard_quarantined(self, ids: Iterable[int] | None = None) -> int:
        """Drop quarantined changes of this collection (all of them by default).

        Returns:
            How many were dropped.
        """
        self._check_open()
        with self._db.transaction() as conn:
            if not Quarantine.exists(conn):
                return 0
            chosen = [q.id for q in Quarantine.list(conn, self.collection)]
            if ids is not None:
                wanted = set(ids)
                chosen = [i for i in chosen if i in wanted]
            return Quarantine.forget(conn, chosen)

    def observe_server_clock(self, reading: ClockReading) -> float | None:
        """Let this store's clock observe a server's clock (sync runs call this).

        Later stamps sort after the server's time; while the store's clock is off by more
        than the server's bound, writes are stamped with the server's time instead (see
        :mod:`nexus_store._hlc`).

        Returns:
            The seconds the store's clock is ahead of the server's (negative: behind) when
            that is beyond the server's bound, else ``None``.
        """
        return self._hlc.observe_clock(reading)

    def _observed(self, hlc: str) -> str | None:
        """A pulled stamp after this store's clock has seen it (``None``: empty or malformed)."""
        if not hlc:
            return None
        try:
            self._hlc.observe(hlc)
        except ValueError:
            return None
        return hlc

    def pull_cursor(self) -> int:
        """The cursor after the last pulled change of this collection (0: none yet)."""
        self._check_open()
        with self._db.reading() as conn:
            return MetaTable.get_int(conn, f"pull_cursor:{self.collection}")

    def set_pull_cursor(self, cursor: int) -> None:
        """Store the pull cursor (inside the caller's transaction, if one is open)."""
        self._check_open()
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"a pull cursor is a non-negative integer, not {cursor!r}")
        with self._db.transaction() as conn:
            MetaTable.set(conn, f"pull_cursor:{self.collection}", cursor)

    # -- lifecycle -----------------------------------------------------------------------

    # -- sync ----------------------------------------------------------------------------

    async def async_sync(
        self,
        *,
        backend: RemoteBackend | None = None,
        device: DeviceStateProvider | None = None,
        budget: float | None = None,
    ) -> SyncSummary:
        """Run one sync run now: push queued ops by priority, then pull remote changes.

        Args:
            backend: where to sync (default: the store's ``backend``).
            device: the device state (``LOW`` waits on a metered network or low battery;
                nothing is sent while disconnected); default: assume a good network.
            budget: the most seconds the run may take; leased ops go back when it ends.

        Returns:
            What the run did (pushed, failed, dead-lettered, pulled, per priority).

        Raises:
            SyncError: no backend was given and the store has none.
            StoreClosedError: the store is closed.
        """
        from .sync.engine._runner import SyncRunner  # noqa: PLC0415 - the engine loads on first sync

        self._check_open()
        chosen = backend if backend is not None else self.backend
        if chosen is None:
            raise SyncError(f"the {self.collection!r} store has no backend: pass backend=")
        runner = SyncRunner(self, chosen, clock=self.clock, device=device, budget=budget)
        return await runner.run()

    def sync(
        self,
        *,
        backend: RemoteBackend | None = None,
        device: DeviceStateProvider | None = None,
        budget: float | None = None,
    ) -> SyncSummary:
        """Blocking form of :meth:`async_sync`, for synchronous apps.

        The run executes on the process's background event loop (a daemon thread shared
        by every store, started on first use), so a backend's connections stay bound to
        one loop whichever store or thread uses it. Ctrl-C while waiting cancels the run
        (its leased ops go back to the queue). From async code, await :meth:`async_sync`
        instead.

        Raises:
            LifecycleError: called from a callback on that loop's own thread.
        """
        self._check_open()
        # Loaded here, not on the loop: importing the engine would stall the loop's thread.
        from .sync.engine import _runner  # noqa: F401, PLC0415

        return shared_loop().call(
            functools.partial(self.async_sync, backend=backend, device=device, budget=budget)
        )

    def wait_synced(self, item_id: ID, timeout: float = 30.0) -> bool:
        """Wait until a write of ``item_id`` is no longer queued.

        Returns:
            True once the server acknowledged it (no op of the item is queued), False if
            its op failed permanently (dead-lettered).

        Raises:
            TimeoutError: the item still has live queued ops after ``timeout`` seconds.
        """
        self._check_open()
        _, key = self._table.key_of(item_id)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            ops = self._queue.pending(self.collection, key, states=tuple(OpState))
            if not any(op.state is not OpState.DEAD for op in ops):
                return not ops
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{item_id!r} still has queued ops after {timeout} s")
            # Acks come from another thread or process; back off up to 50 ms between looks.
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)

    @property
    def _owned_backend(self) -> RemoteBackend | None:
        return self.backend if self.owns_backend else None

    def close(self) -> None:
        """Close the store: its change streams, its queue, its file, and its backend
        (unless ``owns_backend=False``). Idempotent.

        A backend whose connections belong to an event loop is closed on that loop: from
        synchronous code this just works; inside the loop the backend uses, close the
        store with ``await store.aclose()`` (or ``async with``) instead.

        Raises:
            LifecycleError: called inside the event loop the owned backend's connections
                belong to (nothing was closed).
        """
        if self._closed:
            return
        backend = self._owned_backend
        binding = getattr(backend, "_binding", None)
        if binding is not None and binding.thread_id == threading.get_ident() and in_event_loop():
            raise LifecycleError(
                f"{self!r}: its backend's connections belong to the running event loop: "
                "close the store with `await store.aclose()` (or `async with`) there"
            )
        self._closed = True
        if not self._tracked.untrack():
            return
        self._parts.close()
        if backend is not None:
            backend.close()

    async def aclose(self) -> None:
        """Close the store (see :meth:`close`) from async code. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._tracked.untrack():
            return
        await anyio.to_thread.run_sync(self._parts.close)
        backend = self._owned_backend
        if backend is None:
            return
        binding = getattr(backend, "_binding", None)
        if binding is None or binding.thread_id == threading.get_ident():
            await backend.aclose()
        else:  # its connections belong to another loop (the one sync() uses)
            await anyio.to_thread.run_sync(backend.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"NexusStore({self._db.path!r}, model={self.model.__name__}, "
            f"collection={self.collection!r}{state})"
        )


class _StoreParts:
    """What closing a store releases, apart from the store object (see ``_unclosed``)."""

    def __init__(
        self,
        db: Database,
        owns_db: bool,
        queue: PrioritySyncQueue,
        streams: weakref.WeakSet[ChangeStream],
        streams_lock: threading.Lock,
    ) -> None:
        self.db = db
        self.owns_db = owns_db
        self.queue = queue
        self.streams = streams
        self.streams_lock = streams_lock

    def close(self) -> None:
        with self.streams_lock:
            streams = list(self.streams)
            self.streams.clear()
        for stream in streams:
            stream.close()
        self.queue.close()
        if self.owns_db:
            self.db.close()


def _close_forgotten(parts: _StoreParts, backend: RemoteBackend | None) -> None:
    """Close a store its program forgot to close, waiting a bounded time for the backend."""
    try:
        parts.close()
    finally:
        if backend is not None:
            # A forgotten backend whose event loop has ended cannot be closed any more: its
            # sockets ended with that loop's process resources; the warning still tells.
            with contextlib.suppress(LifecycleError):
                close_on_bound_loop(
                    backend.aclose,
                    getattr(backend, "_binding", None),
                    what=repr(backend),
                    timeout=STOP_TIMEOUT,
                )
