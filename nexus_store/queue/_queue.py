"""The persisted priority sync queue: an op log in the store's own SQLite file.

Every local write is recorded as an op in the table ``nx_queue`` of the same database, in
the same transaction as the write (a transactional outbox). A sync run leases a batch,
pushes it, and acks or nacks each op. Payloads are opaque bytes (:mod:`.._codec` encodes
them); only schema migrations decode them.

Rules:

- **Order**: effective priority (``CRITICAL`` first), then insertion sequence ``seq``.
  Each item's head (its oldest live op) sits in a partial index on ``(priority, seq)``
  while it is not backing off, so a lease reads the batch it returns (plus the ops still
  in flight) and not the rest of the queue; ops in backoff have their own index and
  rejoin when their time has come. Leasing and acking are one statement per batch.
- **Stable op ids**: ``op_id`` (a uuid) is made at enqueue and never changes; it is the
  server's idempotency key.
- **Per-item order**: an item's ops are sent one at a time, oldest first: only an item's
  oldest live (not dead) op is eligible; later ones are *blocked*. With ``coalesce=True`` a
  write to an item whose newest op is pending and was never handed out (never leased, no
  attempts) merges into it: latest payload, kind, hlc and schema version, the more urgent
  priority, the older ``seq`` and ``op_id``. An op that was ever leased may have reached the
  server under its op id (even a released one: the cancelled request may have arrived), so
  nothing merges into it; the new op waits behind it. With ``coalesce=False`` every op is
  kept. Either way an op never waits behind a less urgent one: enqueuing raises the
  priority of the item's earlier live ops to the new op's (their *effective* priority).
  A dead op blocks nothing.
- **Leases**: a leased op carries ``leased_until``; once that passes (the worker
  crashed) the op is eligible again and the next :meth:`PrioritySyncQueue.lease` hands it
  out anew (at-least-once delivery; the server dedupes by op id). Until then it still
  shows as ``LEASED``. Lease state (``leased_until``, ``lease_count``) is kept in a small
  table ``nx_leases`` beside the op, keyed by its ``seq``, so a lease writes a page or two
  instead of rewriting its ops' rows (payloads included) on every page they sit on.
- **Fencing**: every lease has a token (``batch.token``, kept in ``nx_leases``); ``ack``,
  ``nack`` and ``release`` given it settle only ops still held under it and report the
  others as stale, so a holder whose lease passed to another run changes nothing (see
  :mod:`._fencing`).
- **Clock steps**: an op that never failed (or whose backoff ended) is eligible whatever
  the wall clock did; retry times and lease ends are moved back once when the clock is
  found to have stepped back (see :mod:`._timeline`), so none waits longer than it was
  set to.
- **Acks in order**: acking several ops of one item at once is acking them one by one in
  the order given; each removed head hands its place, and the version it was acked
  with, to the item's next op.
- **Durability**: enqueues (with the save they belong to), leases, nacks and dead-letter
  changes commit as the database's durability says. Acks and releases commit without
  waiting for the disk (atomic still): a power loss can only undo the last of them, until
  the next durable commit syncs them too. An undone ack leaves an op that was leased,
  so nothing coalesces into it; it is sent again and the server, which keeps its answer by
  op id, answers it again. Leases stay durable: a lease undone by a power loss would let a
  later write coalesce into an op the server may already hold under its op id (a lease in
  chunks syncs the disk once, after its last chunk, before it returns the batch).
- **Failures**: :meth:`~PrioritySyncQueue.nack` counts an attempt and waits
  ``max(retry_after, backoff)``; permanent errors, unresolved conflicts and ``max_attempts``
  dead-letter the op with its reason (see :mod:`.._backoff`). Refused credentials
  (``AUTH``) count no attempt. :meth:`~PrioritySyncQueue.end_backoff` lets ops that failed
  while the remote was unreachable go again as soon as it answers. Dead ops can be listed,
  retried (re-enqueued at the back, same op id) or discarded.
- **Migrations**: ops queued under an older schema version of their collection are
  upgraded by registered steps when leased, or dead-lettered with the reason.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .._backoff import RetryBackoff
from .._clock import Clock, SystemClock
from .._database import Database, Durability, SqliteFailure, translate_sqlite_error
from .._exceptions import QueueError
from .._hlc import HybridLogicalClock
from .._priority import SyncPriority
from ._holding import _Holding
from ._leasing import _Leasing
from ._reading import _Reading
from ._records import (
    _ERROR_KINDS,
    _KIND_VALUES,
    _KINDS,
    _PRIORITIES,
    _PRIORITY_VALUES,
    OpKind,
    OpState,
    QueuedOp,
    _build_op,
)
from ._rules import _MAX_HLC, _check_item_id, _new_op_id, may_coalesce
from ._schema import _OPS, _WAITING, create_schema
from ._settling import _Settling
from ._upgrades import Migration

__all__ = ["PrioritySyncQueue"]

# The item's newest live op (coalescing target, or the op to queue behind), in one statement.
_TAIL_COLUMNS = (
    "q.seq, q.op_id, q.state, q.attempts, coalesce(l.lease_count, q.lease_count), q.priority, "
    "q.base_version, q.tag, q.chain, q.next_attempt_at, q.created_at, q.last_error, q.error_kind"
)
_TAIL = (
    "SELECT " + _TAIL_COLUMNS + _OPS + "WHERE q.collection = ?1 AND q.item_id = ?2 "
    "AND q.chain = 1 UNION ALL SELECT " + _TAIL_COLUMNS + _OPS + "WHERE q.collection = ?1 "
    "AND q.item_id = ?2 AND q.chain = 0 ORDER BY 1 DESC LIMIT 1"
)
_INSERT = (
    "INSERT OR IGNORE INTO nx_queue (op_id, collection, item_id, kind, priority, payload, "
    "schema_version, base_version, hlc, state, chain, delayed, attempts, next_attempt_at, "
    "leased_until, last_error, error_kind, tag, lease_count, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 0, 0, ?, NULL, NULL, NULL, ?, 0, ?, ?)"
)
# Touches no indexed column (a priority raise is done apart), so no index is rewritten.
_COALESCE = (
    "UPDATE nx_queue SET kind = ?, payload = ?, hlc = ?, schema_version = ?, base_version = ?, "
    "tag = ?, updated_at = ? WHERE seq = ?"
)


class PrioritySyncQueue(_Leasing, _Settling, _Reading, _Holding):
    """The persisted priority sync queue (table ``nx_queue``).

    Thread-safe: every call runs under the database's lock. Writes run in
    ``database.transaction()``, which joins a transaction the caller already opened, so a
    store writes an item and its op atomically.

    The class is assembled from its parts, one module each: producing (here), leasing
    (:mod:`._leasing`), settling and dead letters (:mod:`._settling`), reading
    (:mod:`._reading`), lease renewal and holds (:mod:`._holding`) and schema versions
    (:mod:`._upgrades`), over the state they share
    (:mod:`._base`); the rules they follow are pure functions (:mod:`._rules`).

    Args:
        database: a path, ``":memory:"``, or an open :class:`Database` to share (the queue
            then does not close it).
        clock: where time is read (leases, backoff, ages); the system clock by default.
        max_attempts: failures after which an op is dead-lettered.
        backoff: the retry delay policy (exponential with full jitter by default).
        durability: for a database opened here: ``"full"`` (default) or ``"normal"``.
        create: make the queue's table if the database has none (``False``: only open an
            existing queue, e.g. to inspect a file without changing it).

    Raises:
        CorruptDatabaseError: the file is not an SQLite database or is damaged.
        SchemaError: the file has an ``nx_queue`` table of another layout.
        QueueError: ``create=False`` and the database holds no sync queue.
        ValueError: for a bad argument.
    """

    def __init__(
        self,
        database: str | Path | Database = ":memory:",
        *,
        clock: Clock | None = None,
        max_attempts: int = 10,
        backoff: RetryBackoff | None = None,
        durability: Durability = "full",
        create: bool = True,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, not {max_attempts!r}")
        self._clock: Clock = clock or SystemClock()
        self.max_attempts = max_attempts
        self.backoff = backoff or RetryBackoff()
        self._hlc = HybridLogicalClock(clock=self._clock)
        self._steps: dict[tuple[str, int], Migration] = {}
        self._versions: dict[str, int] = {}
        self._loaded: dict[tuple[str, int], Migration] | None = None
        self._load_error = ""
        self._has_meta = False
        self._collections: set[str] = set()
        self._closed = False
        self._writable = create
        if isinstance(database, Database):
            self._owns_database = False
            self.database = database
        else:
            self._owns_database = True
            self.database = Database(database, durability=durability)
        try:
            create_schema(self.database, create)
        except BaseException:
            if self._owns_database:
                self.database.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the queue (and its database, if the queue opened it). Idempotent."""
        self._closed = True
        if self._owns_database:
            self.database.close()

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
        return f"PrioritySyncQueue({self.database.path!r})"

    def enqueue(
        self,
        collection: str,
        item_id: str | int,
        payload: bytes | None,
        *,
        kind: OpKind = OpKind.UPSERT,
        priority: SyncPriority | int | str = SyncPriority.NORMAL,
        schema_version: int = 1,
        base_version: int = 0,
        hlc: str | None = None,
        tag: str | None = None,
        coalesce: bool = True,
    ) -> QueuedOp:
        """Record a write to ``item_id`` of ``collection``.

        Runs in ``database.transaction()`` (joining the caller's transaction, if any).

        Args:
            collection: the collection (table) the item belongs to.
            item_id: the item's id.
            payload: the encoded item; ``None`` only for a delete.
            kind: upsert or delete.
            priority: how urgently to send it.
            schema_version: the model's schema version the payload was encoded with.
            base_version: the server version this write is based on (0: never seen).
            hlc: the write's hybrid logical clock stamp (issued here if not given).
            tag: a free label, kept with the op.
            coalesce: merge into the item's newest op if it was never handed out; with
                ``False`` every op is kept and sent in order.

        Returns:
            The op this write lives in: a new op, or the older op it coalesced into.

        Raises:
            ValueError: for a bad argument.
            StoreClosedError: the queue is closed.
        """
        op = self._enqueue(
            collection,
            item_id,
            payload,
            kind,
            priority,
            schema_version,
            base_version,
            hlc,
            tag,
            coalesce,
            build=True,
        )
        assert op is not None  # built on request
        return op

    def _enqueue(  # noqa: PLR0912, PLR0917 - enqueue's arguments, positional for speed
        self,
        collection: str,
        item_id: str | int,
        payload: bytes | None,
        kind: OpKind,
        priority: SyncPriority | int | str,
        schema_version: int,
        base_version: int,
        hlc: str | None,
        tag: str | None,
        coalesce: bool,
        *,
        build: bool,
    ) -> QueuedOp | None:
        """:meth:`enqueue`; with ``build=False`` a new op is not returned (a store's save
        does not need it, and building the record is a tenth of a save's CPU time)."""
        # Every save goes through here: plain type checks first, slow paths only on a miss.
        if self._closed:
            self._check_open()
        if type(collection) is not str or collection not in self._collections:
            self._check_collection(collection)
        if type(item_id) is not str and type(item_id) is not int:
            _check_item_id(item_id)
        if type(kind) is not OpKind:
            kind = OpKind(kind)
        if payload is None:
            if kind is OpKind.UPSERT:
                raise ValueError("an upsert needs a payload")
        elif not isinstance(payload, bytes):
            raise ValueError(f"payload must be bytes or None, not {type(payload).__name__}")
        if type(priority) is not SyncPriority:
            priority = SyncPriority.coerce(priority)
        if type(schema_version) is not int or schema_version < 1:
            raise ValueError(f"schema_version must be an int >= 1, not {schema_version!r}")
        if type(base_version) is not int or base_version < 0:
            raise ValueError(f"base_version must be an int >= 0, not {base_version!r}")
        if hlc is None:
            hlc = self._hlc.now()
        elif type(hlc) is not str or not 0 < len(hlc) <= _MAX_HLC:
            raise ValueError(f"hlc must be a string of 1 to {_MAX_HLC} characters")
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"tag must be a string or None, not {type(tag).__name__}")
        now = self._clock.now()
        # Plain str/int parameters: sqlite3 binds them without looking for an adapter.
        params = (
            _new_op_id(now),
            collection,
            item_id,
            _KIND_VALUES[kind],
            _PRIORITY_VALUES[priority],
            payload,
            schema_version,
            base_version,
            hlc,
            0,
            now,
            tag,
            now,
            now,
        )
        database = self.database
        with database.lock:
            database.check_open()
            conn = database.conn
            if conn.in_transaction:
                # The caller's transaction (a store's save): join it without the cost of
                # another transaction() block on every save's path.
                try:
                    return self._write_op(conn, params, kind, priority, coalesce, build)
                except SqliteFailure as exc:
                    raise translate_sqlite_error(exc, database.path) from exc
        with database.transaction() as conn:
            return self._write_op(conn, params, kind, priority, coalesce, build)

    def _write_op(  # noqa: PLR0917 - internal, positional for speed
        self,
        conn: sqlite3.Connection,
        params: tuple[Any, ...],
        kind: OpKind,
        priority: SyncPriority,
        coalesce: bool,
        build: bool,
    ) -> QueuedOp | None:
        """Insert (or coalesce) one op; ``params`` are _INSERT's, as an unblocked op."""
        cursor = conn.execute(_INSERT, params)
        blocked = cursor.rowcount != 1
        if not blocked and not build:
            return None
        if blocked:
            behind = self._write_behind(conn, params, coalesce)
            if isinstance(behind, QueuedOp):
                return behind  # coalesced into an earlier op
            cursor = behind
        return _build_op(
            {
                "op_id": params[0],
                "seq": cursor.lastrowid,
                "collection": params[1],
                "item_id": params[2],
                "kind": kind,
                "priority": priority,
                "payload": params[5],
                "schema_version": params[6],
                "base_version": params[7],
                "hlc": params[8],
                "state": OpState.PENDING,
                "attempts": 0,
                "next_attempt_at": params[10],
                "leased_until": None,
                "last_error": None,
                "error_kind": None,
                "tag": params[11],
                "created_at": params[10],
                "updated_at": params[10],
                "blocked": blocked,
                "lease_count": 0,
            }
        )

    def _write_behind(
        self, conn: sqlite3.Connection, params: tuple[Any, ...], coalesce: bool
    ) -> sqlite3.Cursor | QueuedOp:
        """The item has a live op: coalesce into its newest op, or queue behind it."""
        _, collection, item_id, kind, priority, payload, schema_version = params[:7]
        base_version, hlc, _, now, tag = params[7:12]
        tail = conn.execute(_TAIL, (collection, item_id)).fetchone()
        if tail is None:  # pragma: no cover - only an op id collision gets here
            raise QueueError(f"could not queue an op for {collection}/{item_id!r}")
        seq, op_id, state, attempts, leases, tail_priority, tail_base, tail_tag = tail[:8]
        if tail_priority > priority:
            # Nothing may wait behind a less urgent op of the same item.
            self._raise_before(
                conn,
                collection=collection,
                item_id=item_id,
                seq=seq,
                priority=priority,
                now=now,
            )
        if not may_coalesce(coalesce, state, attempts, leases):
            cursor = conn.execute(_INSERT, (*params[:9], 1, *params[10:]))
            if cursor.rowcount != 1:  # pragma: no cover - an op id collision
                raise QueueError(f"could not queue an op for {collection}/{item_id!r}")
            return cursor
        base_version = max(base_version, tail_base)
        tag = tail_tag if tag is None else tag
        conn.execute(_COALESCE, (kind, payload, hlc, schema_version, base_version, tag, now, seq))
        error_kind = tail[12]
        return _build_op(
            {
                "op_id": op_id,
                "seq": seq,
                "collection": collection,
                "item_id": item_id,
                "kind": _KINDS[kind],
                "priority": _PRIORITIES[min(priority, tail_priority)],
                "payload": payload,
                "schema_version": schema_version,
                "base_version": base_version,
                "hlc": hlc,
                "state": OpState.PENDING,
                "attempts": 0,
                "next_attempt_at": tail[9],
                "leased_until": None,
                "last_error": tail[11],
                "error_kind": None if error_kind is None else _ERROR_KINDS[error_kind],
                "tag": tag,
                "created_at": tail[10],
                "updated_at": now,
                "blocked": tail[8] == _WAITING,
                "lease_count": 0,
            }
        )
