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

import functools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal
from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from ._clock import Clock, SystemClock
from ._database import Database, Durability
from ._exceptions import ItemValidationError, StoreClosedError, SyncError
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
from ._priority import SyncPriority
from ._queue import OpKind, OpState, PrioritySyncQueue, QueuedOp
from ._watch import ChangeKind, ChangeLog, ChangeOrigin, ChangeStream, signal_for
from .backends._base import Change, RemoteBackend

if TYPE_CHECKING:
    from .sync._device import DeviceStateProvider
    from .sync._progress import SyncSummary

__all__ = ["NexusStore"]

T = TypeVar("T", bound=BaseModel)
# A default (PEP 696) lets NexusStore("app.db", model=Note) type-check without naming ID.
ID = TypeVar("ID", default=Any)

logger = logging.getLogger("nexus_store")


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
        backend: where the sync engine sends this store's ops (kept for it; unused here).
        coalesce: merge a new write into the item's pending op (default), or keep every op.
        schema_version: the model's version, stored with each queued payload.
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
        coalesce: bool = True,
        schema_version: int = 1,
        clock: Clock | None = None,
        max_attempts: int = 10,
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
        self.coalesce = coalesce
        self.schema_version = schema_version
        self.clock: Clock = clock or SystemClock()
        self._owns_db = not isinstance(path, Database)
        self._db = path if isinstance(path, Database) else Database(path, durability=durability)
        self._closed = False
        # Weak: a stream its user dropped is collected (and unregisters itself).
        self._streams: weakref.WeakSet[ChangeStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        self._portal_lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        try:
            self._table: LocalTable[T] = LocalTable(self._db, spec)
            self._meta = MetaTable(self._db)
            self._log = ChangeLog()
            with self._db.transaction() as conn:
                self._table.ensure_schema(conn)
                self._meta.ensure_schema(conn)
                # Tools that sync the file without the model read how each field is stored.
                MetaTable.set(conn, f"columns:{name}", spec.kinds_json())
                ChangeLog.ensure_schema(conn)
            # One node id per store object: two processes writing one file never issue the
            # same stamp.
            self._hlc = HybridLogicalClock(uuid.uuid4().hex[:12], clock=self.clock)
            self._queue = PrioritySyncQueue(self._db, clock=self.clock, max_attempts=max_attempts)
            self._queue.set_schema_version(name, schema_version)
        except BaseException:
            if self._owns_db:
                self._db.close()
            raise
        self._signal = signal_for(self._db)

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
        stored server version is already as new, when it belongs to another collection, or
        when its data does not fit the model (logged).

        Returns:
            The changes that were applied, in order.
        """
        self._check_open()
        candidates: list[tuple[Change, ItemKey, PreparedItem[T] | None]] = []
        for change in changes:
            if change.collection != self.collection:
                continue
            try:
                _, key = self._table.key_of(change.item_id)
                prepared = None
                if not change.deleted:
                    item = self.model.model_validate(change.data or {})
                    prepared = self._table.prepare(item)
            except (ItemValidationError, ValidationError) as exc:
                logger.warning(
                    "skipping remote change to %s/%r: %s", self.collection, change.item_id, exc
                )
                continue
            candidates.append((change, key, prepared))
        applied: list[Change] = []
        if not candidates:
            return applied
        now = self.clock.now()
        with self._db.transaction() as conn:
            record = self._log.recorder(conn)
            for change, key, prepared in candidates:
                pending = not overwrite_pending and self._queue.is_pending(self.collection, key)
                stored = self._table.stored_version(conn, key)
                if remote_change_action(change.version, stored, has_pending_op=pending) != "apply":
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
        if applied:
            self._signal.notify()
        return applied

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
            return int(MetaTable.get(conn, f"pull_cursor:{self.collection}", 0))

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
        from .sync._runner import SyncRunner  # noqa: PLC0415 - the engine loads on first sync

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

        The run executes in this store's own event-loop thread (started on first use and
        kept until :meth:`close`), so a backend's connections stay bound to one loop. From
        async code, await :meth:`async_sync` instead.
        """
        self._check_open()
        with self._portal_lock:
            if self._portal is None:
                self._portal_cm = start_blocking_portal(name=f"nexus-store sync {self.collection}")
                self._portal = self._portal_cm.__enter__()
            portal = self._portal
        return portal.call(
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

    def close(self) -> None:
        """Close the store, its change streams and its queue. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._portal_lock:
            portal_cm, self._portal_cm, self._portal = self._portal_cm, None, None
        if portal_cm is not None:
            portal_cm.__exit__(None, None, None)
        with self._streams_lock:
            streams, self._streams = list(self._streams), weakref.WeakSet()
        for stream in streams:
            stream.close()
        self._queue.close()
        if self._owns_db:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"NexusStore({self._db.path!r}, model={self.model.__name__}, "
            f"collection={self.collection!r}{state})"
        )
