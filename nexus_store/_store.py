"""``NexusStore[T, ID]``: typed records in a local SQLite file, every write queued for sync.

The store is a thin facade over three parts sharing one
:class:`~nexus_store._database.Database` (one connection, one lock):

- the collection's table (:mod:`._local`),
- the priority sync queue (:mod:`.queue`), reachable as :attr:`NexusStore.queue`,
- the change log that :meth:`NexusStore.watch` follows (:mod:`._watch`).

A save validates the item, then in one ``BEGIN IMMEDIATE`` transaction writes the row,
enqueues its op and appends to the change log; it returns only after ``COMMIT``.

The class is assembled from parts, one module each: reads (:mod:`._store_reads`), its
side of a sync run (:mod:`._store_sync`), opening (:mod:`._store_open`), files
(:mod:`._store_files`), over the state they share (:mod:`._store_base`); writes and the
lifecycle are here.
"""

from __future__ import annotations

import functools
import threading
import uuid
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio.to_thread

from . import _unclosed
from ._changelog import ChangeKind, ChangeLog, ChangeOrigin
from ._clock import Clock, SystemClock
from ._database import Database, Durability
from ._exceptions import ItemValidationError, LifecycleError
from ._hlc import HybridLogicalClock
from ._local import LocalTable
from ._loop import in_event_loop
from ._meta import MetaTable
from ._migrations import Migrations
from ._priority import SyncPriority
from ._quarantine import Quarantine
from ._remote import RemoteBackend
from ._tablespec import PreparedItem, TableSpec, snake_case
from ._watch import ChangeStream, signal_for
from .queue import OpKind, PrioritySyncQueue

if TYPE_CHECKING:
    pass


from ._store_base import ID, T
from ._store_files import _Files
from ._store_open import _close_forgotten, _Opening, _StoreParts
from ._store_reads import _Reads
from .files._model_refs import model_refers_to_blobs

__all__ = ["NexusStore"]


class NexusStore(_Files[T, ID], _Opening[T, ID], _Reads[T, ID]):
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
        clock: where time is read (a :class:`~nexus_store.testing.FakeClock` in tests).
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
        self._blob_fields = model_refers_to_blobs(model)
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
            if self._blob_fields:  # a record waits for the blobs it refers to
                self._hold_records(conn, prepared, now)
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

    # -- lifecycle -----------------------------------------------------------------------

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
