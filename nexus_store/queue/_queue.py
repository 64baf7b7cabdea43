"""The persisted priority sync queue: an op log in the store's own SQLite file.

Every local write is recorded as an op in the table ``nx_queue`` of the same database, in
the same transaction as the write (a transactional outbox). A sync run leases a batch,
pushes it, and acks or nacks each op. Payloads are opaque bytes (:mod:`._codec` encodes
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
  later write coalesce into an op the server may already hold under its op id.
- **Failures**: :meth:`~PrioritySyncQueue.nack` counts an attempt and waits
  ``max(retry_after, backoff)``; permanent errors, unresolved conflicts and ``max_attempts``
  dead-letter the op with its reason (see :mod:`._backoff`). Refused credentials
  (``AUTH``) count no attempt. :meth:`~PrioritySyncQueue.end_backoff` lets ops that failed
  while the remote was unreachable go again as soon as it answers. Dead ops can be listed,
  retried (re-enqueued at the back, same op id) or discarded.
- **Migrations**: ops queued under an older schema version of their collection are
  upgraded by registered steps when leased, or dead-lettered with the reason.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from .. import _codec
from .._backoff import RetryBackoff, plan_failure
from .._clock import Clock, SystemClock
from .._database import Database, Durability, SqliteFailure, translate_sqlite_error
from .._exceptions import (
    CodecError,
    CorruptDatabaseError,
    ErrorKind,
    MigrationError,
    OpNotFoundError,
    QueueError,
    SchemaError,
    StoreClosedError,
)
from .._hlc import HybridLogicalClock
from .._migrations import load_migrations, run_steps
from .._priority import SyncPriority
from .._quarantine import Quarantine
from .._trusted import trusted_builder
from . import _timeline
from ._fencing import LeaseBatch, Settled, new_token

__all__ = [
    "OpKind",
    "OpState",
    "PrioritySyncQueue",
    "QueueStats",
    "QueuedOp",
]

_MAX_COLLECTION = 63
_MAX_HLC = 64
"""The longest stamp the wire carries (``RemoteOp.hlc``)."""


class OpKind(StrEnum):
    """What an op does to its item on the remote."""

    UPSERT = "upsert"
    DELETE = "delete"


class OpState(StrEnum):
    """Where an op is in its life."""

    PENDING = "pending"
    """Waiting to be leased (possibly blocked behind an earlier op or backing off)."""
    LEASED = "leased"
    """Handed to a sync run until ``leased_until``."""
    DEAD = "dead"
    """Dead-lettered: will not be sent unless retried."""


class QueuedOp(BaseModel):
    """One queued op, as stored."""

    model_config = ConfigDict(frozen=True)

    op_id: str
    """Stable uuid: the idempotency key, the same on every retry."""
    seq: int
    """Insertion sequence: FIFO order within a priority."""
    collection: str
    item_id: str | int
    kind: OpKind
    priority: SyncPriority
    """Effective priority: the more urgent of its own and that of any later op of the
    same item waiting for it."""
    payload: bytes | None
    """The encoded item (``None`` for a delete)."""
    schema_version: int
    base_version: int
    """The server version of the item this write was based on (0: never seen)."""
    hlc: str
    state: OpState
    attempts: int
    """Failed sends so far."""
    next_attempt_at: float
    """Earliest time the op may be sent (backoff)."""
    leased_until: float | None
    last_error: str | None
    error_kind: ErrorKind | None
    tag: str | None
    created_at: float
    updated_at: float
    blocked: bool = False
    """Waiting for an earlier live op of the same item."""
    lease_count: int = 0
    """How many times the op was handed out by a lease (if > 0 it may have been sent)."""


class QueueStats(BaseModel):
    """A snapshot of the queue (or of one collection's ops)."""

    model_config = ConfigDict(frozen=True)

    collection: str | None
    """The collection counted, or ``None`` for the whole queue."""
    counts: dict[SyncPriority, dict[OpState, int]]
    """Ops per (effective) priority and state; every priority and state is present."""
    total: int
    pending: int
    """Ops in state ``PENDING`` (including blocked and backing-off ones)."""
    leased: int
    dead: int
    blocked: int
    """Pending ops waiting for an earlier op of the same item."""
    backing_off: int
    """Pending ops whose next attempt is in the future."""
    oldest_pending_age: float | None
    """Seconds since the oldest live (pending or leased) op was created, if any."""
    quarantined: int = 0
    """Pulled changes kept because they could not be applied locally (not ops: counted
    apart from ``total``; see :meth:`~nexus_store.NexusStore.quarantined`)."""

    def count(self, priority: SyncPriority | None = None, state: OpState | None = None) -> int:
        """Ops with the given priority and/or state (all of them by default)."""
        return sum(
            n
            for p, by_state in self.counts.items()
            if priority is None or p == priority
            for s, n in by_state.items()
            if state is None or s == state
        )

    @property
    def live(self) -> int:
        """Ops still to be sent (pending or leased)."""
        return self.pending + self.leased


# -- SQL ------------------------------------------------------------------------------------
# Constant statements, so sqlite3's statement cache prepares each once per connection.
#
# ``chain`` places an op in its item's sequence: 0 the head (the item's oldest live op, the
# only one that may be sent), 1 waiting behind the head, 2 out of it (dead). The item
# indexes depend on ``chain`` alone, so leasing, releasing and nacking never rewrite them.

_HEAD, _WAITING, _OUT = 0, 1, 2

# item_id has no declared type on purpose: no affinity, so 1 and "1" stay distinct ids.
# No CHECK constraints: only this module writes the table, and they cost a third of an INSERT.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_queue (
        seq INTEGER PRIMARY KEY,
        op_id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        item_id NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        payload BLOB,
        schema_version INTEGER NOT NULL,
        base_version INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        state TEXT NOT NULL,
        chain INTEGER NOT NULL,
        delayed INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        leased_until REAL,
        last_error TEXT,
        error_kind TEXT,
        tag TEXT,
        lease_count INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    # Heads not backing off, in serving order: what lease() reads. Leased heads stay in it
    # (skipped until their lease ends), so leasing rewrites no index and an expired lease
    # is eligible again with no extra step.
    """CREATE INDEX IF NOT EXISTS nx_queue_eligible ON nx_queue (priority, seq)
        WHERE chain = 0 AND delayed = 0""",
    # One head per item: a plain INSERT OR IGNORE of a head is how enqueue learns, without
    # a lookup, whether the item already has a live op.
    """CREATE UNIQUE INDEX IF NOT EXISTS nx_queue_head ON nx_queue (collection, item_id)
        WHERE chain = 0""",
    # The ops waiting behind their item's head (few: coalescing keeps chains short).
    "CREATE INDEX IF NOT EXISTS nx_queue_waiting ON nx_queue (collection, item_id) WHERE chain = 1",
    "CREATE INDEX IF NOT EXISTS nx_queue_delayed ON nx_queue (next_attempt_at) WHERE delayed = 1",
    "CREATE INDEX IF NOT EXISTS nx_queue_dead ON nx_queue (seq) WHERE chain = 2",
    # Lease state lives beside the op, keyed by its seq: a lease writes these small rows
    # (a page or two per batch) instead of rewriting the ops' own rows, which hold the
    # payloads and spread over many pages. A row stays while its op lives: leased_until
    # is NULL once the op is released, nacked or dead, and lease_count keeps counting
    # (an op handed out once may have reached the server, so nothing coalesces into it).
    """CREATE TABLE IF NOT EXISTS nx_leases (
        seq INTEGER PRIMARY KEY,
        leased_until REAL,
        lease_count INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        token INTEGER
    )""",
    # Whatever removes an op (ack, discard) removes its lease state with it.
    """CREATE TRIGGER IF NOT EXISTS nx_queue_forget_lease AFTER DELETE ON nx_queue
        BEGIN DELETE FROM nx_leases WHERE seq = old.seq; END""",
    _timeline.SCHEMA,
)
# nx_leases of a file made before leases had fencing tokens gains the column on open.
_LEASE_COLUMNS = "PRAGMA table_info(nx_leases)"
_ADD_TOKEN_COLUMN = "ALTER TABLE nx_leases ADD COLUMN token INTEGER"  # noqa: S105 - SQL
_HAS_LEASE_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_leases'"
# A queue made before lease state moved to nx_leases keeps it in nx_queue's own columns
# (state 'leased', leased_until, lease_count): moved over once, when nx_leases is created.
# Opened only to inspect it, the file stays as it is: an empty nx_leases of the connection
# stands in, and _COLUMNS reads the lease state where the older layout keeps it.
_NO_LEASES = (
    "CREATE TEMP TABLE IF NOT EXISTS nx_leases (seq INTEGER PRIMARY KEY, leased_until REAL, "
    "lease_count INTEGER NOT NULL, updated_at REAL NOT NULL, token INTEGER)"
)
_ADOPT_OLD_LEASES = (
    "INSERT INTO nx_leases (seq, leased_until, lease_count, updated_at) "
    "SELECT seq, CASE WHEN state = 'leased' THEN leased_until END, "
    "max(lease_count, state = 'leased'), updated_at FROM nx_queue "
    "WHERE lease_count > 0 OR state = 'leased'",
    "UPDATE nx_queue SET state = 'pending', leased_until = NULL, lease_count = 0 "
    "WHERE lease_count > 0 OR state = 'leased'",
)
_TABLE_COLUMNS = (
    "seq, op_id, collection, item_id, kind, priority, payload, schema_version, base_version, "
    "hlc, state, chain, attempts, next_attempt_at, leased_until, last_error, error_kind, tag, "
    "lease_count, created_at, updated_at"
)
_REQUIRED_COLUMNS = frozenset(c.strip() for c in _TABLE_COLUMNS.split(",")) | {"delayed"}
# An op as read (what _to_op takes): nx_queue's columns with the lease state of nx_leases.
# In nx_queue itself state is only 'pending' or 'dead', leased_until NULL, lease_count 0,
# except in a file of the older layout opened only to inspect it (nx_leases then empty).
_STATE = "CASE WHEN l.leased_until IS NULL THEN q.state ELSE 'leased' END"
_COLUMNS = (
    "q.seq, q.op_id, q.collection, q.item_id, q.kind, q.priority, q.payload, "
    "q.schema_version, q.base_version, q.hlc, " + _STATE + ", q.chain, q.attempts, "
    "q.next_attempt_at, coalesce(l.leased_until, q.leased_until), q.last_error, q.error_kind, "
    "q.tag, coalesce(l.lease_count, q.lease_count), q.created_at, "
    "max(q.updated_at, coalesce(l.updated_at, 0))"
)
_OPS = " FROM nx_queue q LEFT JOIN nx_leases l ON l.seq = q.seq "

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
# Raise the item's earlier live ops to the urgency of a later one (never lower them). The
# head comes before every waiting op.
_RAISE_HEAD = (
    "UPDATE nx_queue SET priority = ?1, updated_at = ?2 WHERE collection = ?3 AND item_id = ?4 "
    "AND chain = 0 AND priority > ?1"
)
_RAISE_WAITING = (
    "UPDATE nx_queue SET priority = ?1, updated_at = ?2 WHERE collection = ?3 AND item_id = ?4 "
    "AND chain = 1 AND seq <= ?5 AND priority > ?1"
)
_PROMOTE = "UPDATE nx_queue SET delayed = 0 WHERE delayed = 1 AND next_attempt_at <= ?"
# Per priority, one statement picks the next heads in order (with their state after the
# lease: seq first, then _COLUMNS' fields) and one records their leases.
_LEASE_PICK = (
    "SELECT q.seq, q.op_id, q.collection, q.item_id, q.kind, q.priority, q.payload, "
    "q.schema_version, q.base_version, q.hlc, 'leased', q.chain, q.attempts, "
    "q.next_attempt_at, ?1, q.last_error, q.error_kind, q.tag, "
    "coalesce(l.lease_count, 0) + 1, q.created_at, ?2" + _OPS + "WHERE q.chain = 0 "
    "AND q.delayed = 0 AND q.priority = ?3 "
    "AND (l.leased_until IS NULL OR l.leased_until <= ?2)"
)
_LEASE = _LEASE_PICK + " ORDER BY q.seq LIMIT ?4"
_LEASE_IN = (
    _LEASE_PICK + " AND q.collection IN (SELECT value FROM json_each(?5)) ORDER BY q.seq LIMIT ?4"
)
_LEASE_RECORD = (
    "INSERT INTO nx_leases (seq, leased_until, lease_count, updated_at, token) "
    "VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT (seq) DO UPDATE SET leased_until = ?2, "
    "lease_count = lease_count + 1, updated_at = ?3, token = ?4"
)
_LEASE_END = (
    "UPDATE nx_leases SET leased_until = NULL, token = NULL, updated_at = ?1 WHERE seq = ?2"
)
_UPGRADED = "UPDATE nx_queue SET payload = ?, schema_version = ? WHERE seq = ?"
_KILL = (
    "UPDATE nx_queue SET state = 'dead', chain = 2, delayed = 0, "
    "attempts = ?, last_error = ?, error_kind = ?, updated_at = ? WHERE seq = ?"
)
_RETRY_LATER = (
    "UPDATE nx_queue SET delayed = ?, attempts = ?, "
    "next_attempt_at = ?, last_error = ?, error_kind = ?, updated_at = ? WHERE seq = ?"
)
# After the head left or died, the item's oldest waiting op becomes its head.
_ANY_WAITING = "SELECT 1 FROM nx_queue WHERE chain = 1 LIMIT 1"
_UNBLOCK_NEXT = (
    "UPDATE nx_queue SET chain = 0, updated_at = ?1 WHERE seq = (SELECT seq FROM nx_queue "
    "WHERE collection = ?2 AND item_id = ?3 AND chain = 1 ORDER BY seq LIMIT 1)"
)
_UNBLOCK_NEXT_VERSION = (
    "UPDATE nx_queue SET chain = 0, base_version = ?4, updated_at = ?1 WHERE seq = ("
    "SELECT seq FROM nx_queue WHERE collection = ?2 AND item_id = ?3 AND chain = 1 "
    "ORDER BY seq LIMIT 1)"
)
_DELETE_MANY = (
    "DELETE FROM nx_queue WHERE op_id IN (SELECT value FROM json_each(?)) "
    "RETURNING seq, op_id, collection, item_id, chain"
)
# With a fencing token: only the ops still held under it (a join, cheaper per op than a
# correlated EXISTS).
_HELD = (
    "seq IN (SELECT q.seq FROM json_each(?1) j JOIN nx_queue q ON q.op_id = j.value "
    "JOIN nx_leases l ON l.seq = q.seq WHERE l.token = ?2)"
)
_DELETE_HELD = (
    "DELETE FROM nx_queue WHERE " + _HELD + " RETURNING seq, op_id, collection, item_id, chain"
)
_DELETE_HELD_IDS = "DELETE FROM nx_queue WHERE " + _HELD + " RETURNING op_id"
_FIRST_WAITING = "SELECT min(seq) FROM nx_queue WHERE collection = ? AND item_id = ? AND chain = 1"
_DELETE_MANY_QUIETLY = "DELETE FROM nx_queue WHERE op_id IN (SELECT value FROM json_each(?))"
_BY_OP_ID = "SELECT " + _COLUMNS + _OPS + "WHERE q.op_id = ?"
_FOR_NACK = (
    "SELECT q.seq, q.collection, q.item_id, q.state, q.attempts, q.chain, l.token "
    "FROM nx_queue q LEFT JOIN nx_leases l ON l.seq = q.seq WHERE q.op_id = ?"
)
_RELEASE = (
    "UPDATE nx_leases SET leased_until = NULL, token = NULL, updated_at = ?1 WHERE seq IN "
    "(SELECT seq FROM nx_queue WHERE op_id IN (SELECT value FROM json_each(?2))) "
    "AND leased_until IS NOT NULL"
)
_HELD_SEQS = (
    "SELECT q.seq, q.op_id FROM nx_queue q JOIN nx_leases l ON l.seq = q.seq "
    "WHERE q.op_id IN (SELECT value FROM json_each(?1)) AND l.token = ?2 "
    "AND l.leased_until IS NOT NULL"
)
_RELEASE_SEQS = (
    "UPDATE nx_leases SET leased_until = NULL, token = NULL, updated_at = ?1 "
    "WHERE seq IN (SELECT value FROM json_each(?2))"
)
# After a successful exchange with the remote: ops backing off from failures before ?2
# may go again now (a healed network drains at once, not op by op as timers end).
_ANY_DELAYED = "SELECT 1 FROM nx_queue WHERE delayed = 1 LIMIT 1"
_END_BACKOFF = (
    "UPDATE nx_queue SET delayed = 0, next_attempt_at = ?1 WHERE delayed = 1 "
    "AND next_attempt_at > ?1 AND updated_at < ?2"
)
_DEAD_ALL = "SELECT " + _COLUMNS + _OPS + "WHERE q.chain = 2 ORDER BY q.seq"
_DEAD_IN = "SELECT " + _COLUMNS + _OPS + "WHERE q.chain = 2 AND q.collection = ? ORDER BY q.seq"
_HAS_LIVE = "SELECT 1 FROM nx_queue WHERE collection = ? AND item_id = ? AND chain = 0"
_COUNT_LIVE = (
    "SELECT (SELECT count(*) FROM nx_queue WHERE collection = ?1 AND chain = 0) + "
    "(SELECT count(*) FROM nx_queue WHERE collection = ?1 AND chain = 1)"
)
_ITEM_HEAD = (
    "SELECT " + _COLUMNS + _OPS + "WHERE q.collection = ? AND q.item_id = ? AND q.chain = 0"
)
_ITEM_WAITING = (
    "SELECT " + _COLUMNS + _OPS + "WHERE q.collection = ? AND q.item_id = ? AND q.chain = 1"
)
_ITEM_DEAD = (
    "SELECT " + _COLUMNS + _OPS + "WHERE q.chain = 2 AND q.collection = ? AND q.item_id = ?"
)
_PENDING_ALL = (
    "SELECT " + _COLUMNS + _OPS + "WHERE " + _STATE + " IN (SELECT value FROM json_each(?)) "
    "ORDER BY q.priority, q.seq LIMIT ?"
)
_PENDING_IN = (
    "SELECT " + _COLUMNS + _OPS + "WHERE " + _STATE + " IN (SELECT value FROM json_each(?)) "
    "AND q.collection = ? ORDER BY q.priority, q.seq LIMIT ?"
)
_REVIVE = (
    "UPDATE nx_queue SET seq = (SELECT max(seq) + 1 FROM nx_queue), state = 'pending', "
    "chain = ?, delayed = 0, attempts = 0, next_attempt_at = ?, "
    "updated_at = ? WHERE seq = ? RETURNING seq, priority"
)
_MOVE_LEASE = "UPDATE nx_leases SET seq = ? WHERE seq = ?"
# Counts by nx_queue's own state (pending or dead), then the leased ops among the pending
# ones, counted apart (few: a lease's worth), so counting a big queue reads nx_queue alone.
_STATS = (
    "SELECT priority, state, count(*), sum(chain = 1), "
    "sum(state = 'pending' AND chain = 0 AND delayed = 1 AND next_attempt_at > ?1), "
    "min(CASE WHEN chain != 2 THEN created_at END) FROM nx_queue "
    "WHERE ?2 IS NULL OR collection = ?2 GROUP BY priority, state"
)
_STATS_LEASED = (
    "SELECT q.priority, count(*), sum(q.chain = 0 AND q.delayed = 1 AND q.next_attempt_at > ?1) "
    "FROM nx_leases l JOIN nx_queue q ON q.seq = l.seq "
    "WHERE l.leased_until IS NOT NULL AND (?2 IS NULL OR q.collection = ?2) GROUP BY q.priority"
)
_NEXT_PENDING = (
    "SELECT q.next_attempt_at" + _OPS + "WHERE q.chain = 0 AND q.delayed = 0 "
    "AND q.priority = ? AND l.leased_until IS NULL ORDER BY q.seq LIMIT 1"
)
_NEXT_DELAYED = (
    "SELECT next_attempt_at FROM nx_queue WHERE delayed = 1 AND chain = 0 "
    "AND priority IN (SELECT value FROM json_each(?)) ORDER BY next_attempt_at LIMIT 1"
)
# Asked only when no head is pending: then the eligible index holds leased heads alone.
_NEXT_LEASE_END = (
    "SELECT min(l.leased_until) FROM nx_leases l JOIN nx_queue q ON q.seq = l.seq "
    "WHERE q.chain = 0 AND q.delayed = 0 AND q.priority IN (SELECT value FROM json_each(?))"
)

_ALL_PRIORITIES: tuple[SyncPriority, ...] = tuple(sorted(SyncPriority))
_ALL_STATES: tuple[OpState, ...] = tuple(OpState)
_KINDS = {k.value: k for k in OpKind}
_STATES = {s.value: s for s in OpState}
_ERROR_KINDS = {k.value: k for k in ErrorKind}
_PRIORITIES = {int(p): p for p in SyncPriority}
_KIND_VALUES = {k: str(k.value) for k in OpKind}
_PRIORITY_VALUES = {p: int(p) for p in SyncPriority}

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""A step that upgrades one payload (a decoded dict) from version ``n`` to ``n + 1``."""

_HAS_META = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_meta'"
_RECORDED_VERSIONS = (
    "SELECT key, value FROM nx_meta WHERE key >= 'schema_version:' AND key < 'schema_version;'"
)


class _MissingSteps(dict[tuple[str, int], Migration]):
    """No steps: looking one up fails with the reason the file's migrations did not load."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def get(self, key: Any, default: Any = None) -> Any:
        collection, version = key
        raise MigrationError(
            f"no migration registered for {collection!r} from schema v{version} to "
            f"v{version + 1}{self.reason}"
        )


_UUID7_MARKS = (0x7 << 76) | (0b10 << 62)
# A generator of our own (seeded from the OS), so an app that seeds the random module's
# shared one cannot make two devices issue the same ids; re-seeded in a forked child.
_rng = random.Random()  # noqa: S311 - ids must be unique, not secret
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits


def _new_op_id(now: float) -> str:
    """A time-ordered uuid (RFC 9562 version 7 layout: 48 bits of milliseconds, 74 random).

    Ids made close in time sort close together, so the unique index on ``op_id`` grows at
    its end instead of touching a random page per insert (a random uuid4 made inserts into
    a large queue several times slower once the index outgrew SQLite's page cache).
    """
    # 48 bits of milliseconds, version 7, 12 random bits, variant 0b10, 62 random bits, from
    # _rng: unique enough for ids, at a tenth of the cost of os.urandom.
    millis = min(max(int(now * 1000), 0), _MAX_MILLIS)
    bits = (millis << 80) | _UUID7_MARKS | (_random_bits(12) << 64) | _random_bits(62)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_MAX_MILLIS = (1 << 48) - 1
# Every enqueue and every leased row makes a QueuedOp of values that are already typed
# (our own table, checked arguments): built without validating them again.
_build_op = trusted_builder(
    QueuedOp,
    {
        "op_id": "00000000-0000-4000-8000-000000000000",
        "seq": 1,
        "collection": "c",
        "item_id": 1,
        "kind": OpKind.UPSERT,
        "priority": SyncPriority.NORMAL,
        "payload": b"x",
        "schema_version": 1,
        "base_version": 0,
        "hlc": "h",
        "state": OpState.PENDING,
        "attempts": 0,
        "next_attempt_at": 1.0,
        "leased_until": None,
        "last_error": None,
        "error_kind": None,
        "tag": None,
        "created_at": 1.0,
        "updated_at": 1.0,
        "blocked": False,
        "lease_count": 0,
    },
)


def _to_op(row: Sequence[Any]) -> QueuedOp:
    """The record of a row of _COLUMNS (a dict display: the cheapest way to build it).

    Raises:
        CorruptDatabaseError: a value of the row breaks the table's schema (the file is
            damaged, or was written by something else).
    """
    try:
        error_kind = row[16]
        op = _build_op(
            {
                "op_id": row[1],
                "seq": row[0],
                "collection": row[2],
                "item_id": row[3],
                "kind": _KINDS[row[4]],
                "priority": _PRIORITIES[row[5]],
                "payload": row[6],
                "schema_version": row[7],
                "base_version": row[8],
                "hlc": row[9],
                "state": _STATES[row[10]],
                "attempts": row[12],
                "next_attempt_at": row[13],
                "leased_until": row[14],
                "last_error": row[15],
                "error_kind": None if error_kind is None else _ERROR_KINDS[error_kind],
                "tag": row[17],
                "created_at": row[19],
                "updated_at": row[20],
                "blocked": row[11] == _WAITING,
                "lease_count": row[18],
            }
        )
    except (KeyError, TypeError) as exc:
        raise _corrupt_op(row, exc) from None
    # The numbers the queue and a sync run compute with (cheap enough for every lease);
    # _to_checked_op checks every value. A damaged text or payload makes a leased op
    # unsendable, and the run dead-letters it with the reason.
    if not type(row[0]) is int is type(row[7]) is type(row[8]) is type(row[12]) is type(row[18]):
        raise _corrupt_op(row, None)
    return op


def _to_checked_op(row: Sequence[Any]) -> QueuedOp:
    """:func:`_to_op`, with every value of the row checked (for listings, not leases).

    Raises:
        CorruptDatabaseError: a value of the row breaks the table's schema.
    """
    op = _to_op(row)
    if not _sound(row):
        raise _corrupt_op(row, None)
    return op


_NUMBER = (float, int)
_LIVE_CHAINS = frozenset((_HEAD, _WAITING))


def _sound(row: Sequence[Any]) -> bool:
    """Whether every value of a _COLUMNS row has its column's type (and sane bounds)."""
    (seq, op_id, collection, item_id, kind, _, payload, version, base, hlc, state, chain) = row[:12]
    (attempts, next_at, until, error, _, tag, leases, created, updated) = row[12:]
    return (
        type(seq) is int is type(version) is type(base) is type(attempts) is type(leases)
        and version >= 1
        and base >= 0
        and attempts >= 0
        and type(op_id) is str is type(collection) is type(hlc)
        and (type(item_id) is str or type(item_id) is int)
        and (type(payload) is bytes or (payload is None and kind == "delete"))
        and (chain in _LIVE_CHAINS) is (state != "dead")
        and (chain in _LIVE_CHAINS or chain == _OUT)
        and type(next_at) in _NUMBER
        and type(created) in _NUMBER
        and type(updated) in _NUMBER
        and (until is None or type(until) in _NUMBER)
        and (error is None or type(error) is str)
        and (tag is None or type(tag) is str)
    )


_COLUMN_NAMES = (
    *("seq", "op_id", "collection", "item_id", "kind", "priority", "payload", "schema_version"),
    *("base_version", "hlc", "state", "chain", "attempts", "next_attempt_at", "leased_until"),
    *("last_error", "error_kind", "tag", "lease_count", "created_at", "updated_at"),
)


def _corrupt_op(row: Sequence[Any], exc: Exception | None) -> CorruptDatabaseError:
    """The error for a queue row that breaks the schema, naming the row and what is wrong."""
    what = ", ".join(damage_of(row)) or (repr(exc) if exc is not None else "inconsistent values")
    return CorruptDatabaseError(f"nx_queue row seq={row[0]!r} is damaged: {what}")


def damage_of(row: Sequence[Any]) -> list[str]:
    """What is wrong with a row of nx_queue's columns (in _COLUMNS order): ``name=value``
    for each value that does not fit its column; empty if the row is sound."""
    return [
        f"{name}={value!r:.40}"
        for name, value in zip(_COLUMN_NAMES, row, strict=False)
        if not _value_fits(name, value, row)
    ]


def _value_fits(name: str, value: Any, row: Sequence[Any]) -> bool:
    """Whether one value of a queue row fits its column (for the error message)."""
    if name == "kind":
        return value in _KINDS
    if name == "priority":
        return type(value) is int and value in _PRIORITIES
    if name == "state":
        return value in _STATES and (value == "dead") == (row[11] == _OUT)
    if name == "error_kind":
        return value is None or value in _ERROR_KINDS
    if name == "chain":
        return value in (_HEAD, _WAITING, _OUT)
    if name == "item_id":
        return type(value) is str or type(value) is int
    if name == "payload":
        return type(value) is bytes or (value is None and row[4] == "delete")
    if name in ("op_id", "collection", "hlc"):
        return type(value) is str
    if name in ("last_error", "tag"):
        return value is None or type(value) is str
    if name in ("next_attempt_at", "created_at", "updated_at"):
        return type(value) in _NUMBER
    if name == "leased_until":
        return value is None or type(value) in _NUMBER
    if name in ("schema_version",):
        return type(value) is int and value >= 1
    return type(value) is int and value >= 0


def upgrade_payload(
    payload: bytes,
    *,
    collection: str,
    from_version: int,
    to_version: int,
    steps: Mapping[tuple[str, int], Migration],
) -> bytes:
    """Run the migration steps that take ``payload`` from one schema version to another.

    Raises:
        MigrationError: a step is missing, fails, or returns something that is not a dict,
            or the payload does not decode to a dict.
    """
    try:
        value = _codec.decode(payload)
    except CodecError as exc:
        raise MigrationError(f"cannot decode payload of schema v{from_version}: {exc}") from exc
    if not isinstance(value, dict):
        raise MigrationError(f"payload of schema v{from_version} is not a mapping")
    value = run_steps(steps, collection, value, from_version, to_version)
    try:
        return _codec.encode(value)
    except CodecError as exc:
        raise MigrationError(f"cannot encode migrated payload: {exc}") from exc


def _op_ids(op_ids: str | Iterable[str]) -> list[str]:
    """The ids as a list, each once (a repeated id is one op: acked, nacked... once)."""
    if isinstance(op_ids, str):
        return [op_ids]
    ids = list(dict.fromkeys(op_ids))
    for op_id in ids:
        if not isinstance(op_id, str):
            raise ValueError(f"op ids are strings, not {type(op_id).__name__}")  # noqa: TRY004
    return ids


def _delete_held(
    conn: sqlite3.Connection, ids: list[str], token: int, *, rows_needed: bool
) -> tuple[list[Any], tuple[str, ...]]:
    """Delete the ops of ``ids`` still held under ``token``; returns the deleted rows (as
    _DELETE_HELD returns them, or just their op ids unless ``rows_needed``) and the ids
    refused as stale, in the order given."""
    if rows_needed:
        rows = conn.execute(_DELETE_HELD, (json.dumps(ids), token)).fetchall()
        deleted = {row[1] for row in rows} if len(rows) < len(ids) else set()
    else:
        # Nothing to hand over: only the ids come back (to name the refused ones).
        rows = conn.execute(_DELETE_HELD_IDS, (json.dumps(ids), token)).fetchall()
        deleted = {row[0] for row in rows} if len(rows) < len(ids) else set()
    if len(rows) == len(ids):
        return rows, ()
    return rows, tuple(op_id for op_id in ids if op_id not in deleted)


def _check_token(token: object) -> None:
    if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
        raise ValueError(f"a lease token is an int (batch.token), not {type(token).__name__}")


def _check_item_id(item_id: object) -> str | int:
    if isinstance(item_id, bool) or not isinstance(item_id, str | int):
        raise ValueError(f"item_id must be a str or an int, not {type(item_id).__name__}")  # noqa: TRY004
    return item_id


def _handover(
    removed: Sequence[tuple[int, str, int]], versions: Mapping[str, int], first: int
) -> tuple[bool, int | None]:
    """Replay one item's removals in the order given (``(seq, op_id, chain)`` each).

    The item's head is its oldest live op; removing it makes the next live op the head,
    based on the version the removed head was acked with, if given. ``first`` is the
    item's oldest waiting op that stays. Returns whether ``first`` becomes the head, and
    the version it is then based on (``None``: it keeps its own).
    """
    live = sorted({seq for seq, _, chain in removed if chain != _OUT} | {first})
    version: int | None = None
    for seq, op_id, chain in removed:
        if chain == _OUT:
            continue
        was_head = seq == live[0]
        live.remove(seq)
        if was_head:
            version = versions.get(op_id)
            if live[0] == first:
                return True, version
    return False, None


class PrioritySyncQueue:
    """The persisted priority sync queue (table ``nx_queue``).

    Thread-safe: every call runs under the database's lock. Writes run in
    ``database.transaction()``, which joins a transaction the caller already opened, so a
    store writes an item and its op atomically.

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
            self._create_schema(create)
        except BaseException:
            if self._owns_database:
                self.database.close()
            raise

    def _create_schema(self, create: bool) -> None:
        with self.database.reading() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(nx_queue)")}
        if not columns and not create:
            raise QueueError(f"{self.database.path}: no sync queue in this database")
        missing = _REQUIRED_COLUMNS - columns
        if columns and missing:
            raise SchemaError(
                f"{self.database.path}: table nx_queue lacks columns {sorted(missing)}; "
                "it was not made by this version of nexus-store"
            )
        with self.database.reading() as conn:
            has_leases = conn.execute(_HAS_LEASE_TABLE).fetchone() is not None
        if create:
            with self.database.transaction() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
                if columns and not has_leases:
                    for statement in _ADOPT_OLD_LEASES:
                        conn.execute(statement)
                if not any(row[1] == "token" for row in conn.execute(_LEASE_COLUMNS)):
                    conn.execute(_ADD_TOKEN_COLUMN)
        elif not has_leases:
            # A queue of the older layout, only inspected: the file stays as it is, and its
            # lease state is read where that layout keeps it (see _COLUMNS).
            with self.database.reading() as conn:
                conn.execute(_NO_LEASES)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the queue (or its database) was closed."""
        return self._closed or self.database.closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.database.path}: the sync queue is closed")

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

    # -- producing ---------------------------------------------------------------------------

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
        if not (coalesce and state == "pending" and attempts == 0 == leases):
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

    @staticmethod
    def _raise_before(
        conn: sqlite3.Connection,
        *,
        collection: str,
        item_id: str | int,
        seq: int,
        priority: int,
        now: float,
    ) -> None:
        """Raise the item's live ops up to ``seq`` to ``priority`` (never lower them)."""
        conn.execute(_RAISE_HEAD, (priority, now, collection, item_id))
        conn.execute(_RAISE_WAITING, (priority, now, collection, item_id, seq))

    def _check_collection(self, collection: object) -> None:
        if not isinstance(collection, str) or not 0 < len(collection) <= _MAX_COLLECTION:
            raise ValueError(
                f"collection must be a non-empty string of at most {_MAX_COLLECTION} "
                f"characters, not {collection!r}"
            )
        self._collections.add(collection)

    # -- consuming ---------------------------------------------------------------------------

    def lease(
        self,
        max_ops: int = 100,
        lease_for: float = 30.0,
        *,
        collections: str | Iterable[str] | None = None,
        priorities: Iterable[SyncPriority | int | str] | None = None,
    ) -> LeaseBatch:
        """Hand out the next eligible ops, in queue order, until ``lease_for`` seconds pass.

        Eligible: pending, the oldest live op of its item, and not backing off; or leased
        with an expired lease. An op that never failed is always eligible, whatever the
        wall clock did since it was queued. Payloads of an older schema version are
        upgraded first; those that cannot be are dead-lettered and not returned.

        The ops are held under a new fencing token (``batch.token``): pass it to
        :meth:`ack`, :meth:`nack` and :meth:`release`, and a settle that comes after the
        lease passed to another holder changes nothing (see :mod:`._fencing`).

        Args:
            max_ops: the most ops to return.
            lease_for: seconds until the lease expires and the ops become eligible again.
            collections: only ops of these collections (all by default).
            priorities: only ops of these (effective) priorities (all by default); e.g.
                without ``LOW`` on a metered network.

        Returns:
            The leased ops (state ``LEASED``), most urgent first, with their token.

        Raises:
            ValueError: for a bad argument.
            StoreClosedError: the queue is closed.
        """
        self._check_open()
        if isinstance(max_ops, bool) or not isinstance(max_ops, int) or max_ops < 1:
            raise ValueError(f"max_ops must be a positive int, not {max_ops!r}")
        if not (isinstance(lease_for, int | float) and math.isfinite(lease_for) and lease_for > 0):
            raise ValueError(f"lease_for must be a positive number of seconds, not {lease_for!r}")
        allowed = (
            _ALL_PRIORITIES
            if priorities is None
            else tuple(sorted({SyncPriority.coerce(p) for p in priorities}))
        )
        names = None
        if collections is not None:
            chosen = [collections] if isinstance(collections, str) else list(collections)
            if not all(isinstance(c, str) for c in chosen):
                raise ValueError("collections must be strings")
            names = json.dumps(sorted(set(chosen)))
        now = self._clock.now()
        until = now + float(lease_for)
        token = new_token()
        leased = LeaseBatch(token=token)
        with self.database.transaction() as conn:
            _timeline.observe(conn, now)
            conn.execute(_PROMOTE, (now,))
            for priority in allowed:
                # Bounded: each round leases rows or dead-letters at least one op.
                while len(leased) < max_ops:
                    want = max_ops - len(leased)
                    if names is None:
                        rows = conn.execute(_LEASE, (until, now, int(priority), want)).fetchall()
                    else:
                        params = (until, now, int(priority), want, names)
                        rows = conn.execute(_LEASE_IN, params).fetchall()
                    if not rows:
                        break
                    good, failed = self._upgrade_rows(conn, rows, now)
                    conn.executemany(_LEASE_RECORD, [(row[0], until, now, token) for row in good])
                    leased += map(_to_op, good)
                    if not failed and len(rows) < want:
                        break
        return leased

    def _upgrade_rows(
        self, conn: sqlite3.Connection, rows: list[Any], now: float
    ) -> tuple[list[Any], int]:
        """Upgrade rows of an older schema version; dead-letter those that cannot be.

        The current version of a collection is the higher of the one declared here and the
        one its store recorded in the file, so a process without the model (a worker)
        upgrades what the app's newer model needs. Steps are those registered here, or else
        those at the import path the file records (loaded once).
        """
        versions = self._versions
        if any(row[2] not in versions for row in rows):
            # A collection this queue has no version for (a worker, the sync command): the
            # version its store recorded in the file.
            versions = self._target_versions(conn)
        if not versions:
            return rows, 0
        good: list[Any] = []
        failed = 0
        for row in rows:
            target = versions.get(row[2])
            if target is None or type(row[7]) is not int or row[7] >= target:
                good.append(row)
                continue
            payload = row[6]
            if payload is not None:
                try:
                    payload = upgrade_payload(
                        payload,
                        collection=row[2],
                        from_version=row[7],
                        to_version=target,
                        steps=self._steps_for(conn, row[2]),
                    )
                except MigrationError as exc:
                    failed += 1
                    self._kill(
                        conn,
                        seq=row[0],
                        collection=row[2],
                        item_id=row[3],
                        attempts=row[12],
                        reason=str(exc),
                        now=now,
                        head=row[11] == _HEAD,
                    )
                    continue
            conn.execute(_UPGRADED, (payload, target, row[0]))
            good.append((*row[:6], payload, target, *row[8:]))
        return good, failed

    def _target_versions(self, conn: sqlite3.Connection) -> dict[str, int]:
        """The current schema version of each collection (declared here, or recorded)."""
        versions = self._versions
        if not self._has_meta:
            if conn.execute(_HAS_META).fetchone() is None:
                return versions  # a bare queue: no store recorded anything
            self._has_meta = True  # a table, once there, stays
        recorded = conn.execute(_RECORDED_VERSIONS).fetchall()
        if recorded:
            versions = dict(versions)
            for key, value in recorded:
                collection = key.removeprefix("schema_version:")
                if type(value) is int and value > versions.get(collection, 0):
                    versions[collection] = value
        return versions

    def _steps_for(
        self, conn: sqlite3.Connection, collection: str
    ) -> Mapping[tuple[str, int], Migration]:
        """The steps to upgrade a collection's payloads: registered here, or else imported
        from the path the file records (once per queue)."""
        if any(c == collection for c, _ in self._steps):
            return self._steps
        if self._loaded is None:
            row = None
            if conn.execute(_HAS_META).fetchone() is not None:
                row = conn.execute("SELECT value FROM nx_meta WHERE key = 'migrations'").fetchone()
            self._loaded = {}
            if row is not None and isinstance(row[0], str):
                try:
                    self._loaded = load_migrations(row[0]).steps
                except MigrationError as exc:
                    self._load_error = f" ({exc})"
        if not any(c == collection for c, _ in self._loaded):
            return _MissingSteps(self._load_error)
        return self._loaded

    def _kill(
        self,
        conn: sqlite3.Connection,
        *,
        seq: int,
        collection: str,
        item_id: str | int,
        attempts: int,
        reason: str,
        now: float,
        head: bool,
        kind: ErrorKind = ErrorKind.PERMANENT,
    ) -> None:
        """Dead-letter an op; if it was its item's head, the next op takes its place."""
        conn.execute(_KILL, (attempts, reason, kind.value, now, seq))
        conn.execute(_LEASE_END, (now, seq))
        if head:
            conn.execute(_UNBLOCK_NEXT, (now, collection, item_id))

    def ack(
        self,
        op_ids: str | Iterable[str],
        *,
        versions: Mapping[str, int] | None = None,
        token: int | None = None,
    ) -> Settled:
        """Remove ops the remote accepted.

        The commit does not wait for the disk (see the module's notes on durability): a
        power loss may undo the last acks, and those ops are sent again.

        Args:
            op_ids: the accepted ops (unknown ids are ignored: an op may have been acked by
                another run after its lease expired).
            versions: the server version of the item after each op; the next op of the same
                item is then based on it (its ``base_version``).
            token: the lease's fencing token (``batch.token``): only ops still held under it
                are removed, the others are reported as stale. ``None``: any op is removed.

        Returns:
            How many ops were removed (an int), with ``stale``: the ids refused.

        Raises:
            StoreClosedError: the queue is closed.
        """
        self._check_open()
        ids = _op_ids(op_ids)
        if versions:
            for op_id, given in versions.items():
                if isinstance(given, bool) or not isinstance(given, int) or given < 0:
                    raise ValueError(f"version of {op_id!r} must be an int >= 0, not {given!r}")
        _check_token(token)
        now = self._clock.now()
        with self.database.transaction(durable=False) as conn:
            return self._remove(conn, ids, versions or {}, now, token)

    @staticmethod
    def _remove(
        conn: sqlite3.Connection,
        ids: list[str],
        versions: Mapping[str, int],
        now: float,
        token: int | None = None,
    ) -> Settled:
        """Delete ops (those held under ``token``, if given), in the order given; each
        removed head hands its place to its item's next op (with the version it was acked
        with, if any)."""
        # Most of the time no op waits behind another at all: then nothing needs to know
        # which ops were heads, and the rows need not come back to Python.
        waiting = conn.execute(_ANY_WAITING).fetchone() is not None
        stale: tuple[str, ...] = ()
        if token is not None:
            rows, stale = _delete_held(conn, ids, token, rows_needed=waiting)
            if not waiting:
                return Settled(len(rows), stale)
        elif not waiting:
            return Settled(conn.execute(_DELETE_MANY_QUIETLY, (json.dumps(ids),)).rowcount)
        else:
            rows = conn.execute(_DELETE_MANY, (json.dumps(ids),)).fetchall()
        position = {op_id: n for n, op_id in enumerate(ids)}
        by_item: dict[tuple[str, str | int], list[tuple[int, str, int]]] = {}
        for seq, op_id, collection, item_id, chain in sorted(rows, key=lambda r: position[r[1]]):
            by_item.setdefault((collection, item_id), []).append((seq, op_id, chain))
        for (collection, item_id), removed in by_item.items():
            if all(chain != _HEAD for _, _, chain in removed):
                continue  # the item's head stays: nothing moves up
            first = conn.execute(_FIRST_WAITING, (collection, item_id)).fetchone()[0]
            if first is None:
                continue  # nothing left behind the removed ops
            moves, version = _handover(removed, versions, first)
            if not moves:  # pragma: no cover - a removed head always hands over
                continue
            if version is None:
                conn.execute(_UNBLOCK_NEXT, (now, collection, item_id))
            else:
                conn.execute(_UNBLOCK_NEXT_VERSION, (now, collection, item_id, version))
        return Settled(len(rows), stale)

    def nack(
        self,
        op_ids: str | Iterable[str],
        error: str,
        *,
        kind: ErrorKind = ErrorKind.RETRYABLE,
        retry_after: float | None = None,
        token: int | None = None,
    ) -> Settled:
        """Record a failed send: count an attempt, then back off or dead-letter.

        ``PERMANENT`` and ``CONFLICT`` (a conflict nobody resolved) dead-letter at once, as
        does reaching ``max_attempts``; ``RETRYABLE`` waits ``max(retry_after, backoff with
        jitter)`` seconds. ``AUTH`` (refused credentials: not the op's failure) counts no
        attempt and never dead-letters: the op waits ``retry_after`` seconds, if given.

        Args:
            op_ids: the failed ops (unknown or dead ones are ignored).
            error: the reason, kept as ``last_error``.
            kind: how the failure was classified.
            retry_after: seconds the remote asked to wait, if it said.
            token: the lease's fencing token: only ops still held under it are updated,
                the others are reported as stale. ``None``: any live op is.

        Returns:
            How many ops were updated (an int), with ``stale``: the ids refused.

        Raises:
            ValueError: for a bad argument.
            StoreClosedError: the queue is closed.
        """
        self._check_open()
        ids = _op_ids(op_ids)
        if not isinstance(error, str):
            raise ValueError(f"error must be a string, not {type(error).__name__}")  # noqa: TRY004
        kind = ErrorKind(kind)
        if retry_after is not None and not (
            isinstance(retry_after, int | float) and math.isfinite(retry_after) and retry_after >= 0
        ):
            raise ValueError(f"retry_after must be a number of seconds >= 0, not {retry_after!r}")
        _check_token(token)
        now = self._clock.now()
        updated = 0
        stale: list[str] = []
        with self.database.transaction() as conn:
            _timeline.observe(conn, now)
            for op_id in ids:
                row = conn.execute(_FOR_NACK, (op_id,)).fetchone()
                if token is not None and (row is None or row[6] != token):
                    stale.append(op_id)
                    continue
                if row is None or row[3] == "dead":
                    continue
                seq, collection, item_id, _, attempts, chain, _ = row
                plan = plan_failure(
                    attempts=attempts,
                    max_attempts=self.max_attempts,
                    kind=kind,
                    now=now,
                    retry_after=retry_after,
                    policy=self.backoff,
                )
                updated += 1
                if plan.dead:
                    self._kill(
                        conn,
                        seq=seq,
                        collection=collection,
                        item_id=item_id,
                        attempts=plan.attempts,
                        reason=error,
                        now=now,
                        head=chain == _HEAD,
                        kind=kind,
                    )
                else:
                    conn.execute(
                        _RETRY_LATER,
                        (
                            int(plan.next_attempt_at > now),
                            plan.attempts,
                            plan.next_attempt_at,
                            error,
                            kind.value,
                            now,
                            seq,
                        ),
                    )
                    conn.execute(_LEASE_END, (now, seq))
        return Settled(updated, stale)

    def release(self, op_ids: str | Iterable[str], *, token: int | None = None) -> Settled:
        """Give leased ops back untouched (a cancelled run): no attempt is counted.

        Args:
            op_ids: the ops to give back.
            token: the lease's fencing token: only ops still held under it are released,
                the others are reported as stale. ``None``: any leased op is.

        Returns:
            How many leased ops were released (an int), with ``stale``: the ids refused.
        """
        self._check_open()
        ids = _op_ids(op_ids)
        _check_token(token)
        now = self._clock.now()
        with self.database.transaction(durable=False) as conn:
            if token is None:
                return Settled(conn.execute(_RELEASE, (now, json.dumps(ids))).rowcount)
            held = conn.execute(_HELD_SEQS, (json.dumps(ids), token)).fetchall()
            if held:
                conn.execute(_RELEASE_SEQS, (now, json.dumps([seq for seq, _ in held])))
            kept = {op_id for _, op_id in held}
            return Settled(len(held), (op_id for op_id in ids if op_id not in kept))

    def end_backoff(self, failed_before: float) -> int:
        """Make ops that are backing off from failures before ``failed_before`` eligible now.

        For after a successful exchange with the remote: ops that failed while it was
        unreachable or failing go again at once, instead of each waiting out its own
        timer. Ops that failed since ``failed_before`` keep their wait (so an op the
        remote keeps refusing is not retried in a loop within one run).

        Returns:
            How many ops became eligible.
        """
        self._check_open()
        now = self._clock.now()
        with self.database.reading() as conn:
            if conn.execute(_ANY_DELAYED).fetchone() is None:
                return 0  # the common case: nothing backing off, nothing to write
        with self.database.transaction() as conn:
            _timeline.observe(conn, now)
            return conn.execute(_END_BACKOFF, (now, failed_before)).rowcount

    # -- dead letters ----------------------------------------------------------------------

    def dead(self, collection: str | None = None) -> list[QueuedOp]:
        """The dead-lettered ops (of one collection, or all), oldest first."""
        self._check_open()
        with self.database.reading() as conn:
            if collection is None:
                rows = conn.execute(_DEAD_ALL).fetchall()
            else:
                rows = conn.execute(_DEAD_IN, (collection,)).fetchall()
        return [_to_checked_op(row) for row in rows]

    def retry_dead(self, op_ids: str | Iterable[str] | None = None) -> int:
        """Send dead ops again: each is re-enqueued at the back, same op id, attempts reset.

        It keeps its priority and, like a new write, waits behind its item's live ops.

        Args:
            op_ids: the ops to retry (unknown or live ones are ignored); all dead ops by
                default.

        Returns:
            How many ops were revived.
        """
        self._check_open()
        now = self._clock.now()
        with self.database.transaction() as conn:
            if op_ids is None:
                rows = conn.execute(_DEAD_ALL).fetchall()
            else:
                rows = []
                for op_id in _op_ids(op_ids):
                    row = conn.execute(_BY_OP_ID, (op_id,)).fetchone()
                    if row is not None and row[10] == "dead":
                        rows.append(row)
                rows.sort(key=lambda r: r[0])
            for row in rows:
                collection, item_id = row[2], row[3]
                blocked = conn.execute(_HAS_LIVE, (collection, item_id)).fetchone() is not None
                new_seq, priority = conn.execute(
                    _REVIVE, (_WAITING if blocked else _HEAD, now, now, row[0])
                ).fetchone()
                conn.execute(_MOVE_LEASE, (new_seq, row[0]))
                if blocked:
                    self._raise_before(
                        conn,
                        collection=collection,
                        item_id=item_id,
                        seq=new_seq,
                        priority=priority,
                        now=now,
                    )
        return len(rows)

    def discard(self, op_ids: str | Iterable[str]) -> int:
        """Delete ops without sending them (any state); later ops of their items move up.

        Returns:
            How many ops were deleted.
        """
        self._check_open()
        ids = _op_ids(op_ids)
        now = self._clock.now()
        with self.database.transaction() as conn:
            return self._remove(conn, ids, {}, now)

    # -- introspection -----------------------------------------------------------------------

    def get(self, op_id: str) -> QueuedOp:
        """The op with this id.

        Raises:
            OpNotFoundError: no such op.
        """
        self._check_open()
        with self.database.reading() as conn:
            row = conn.execute(_BY_OP_ID, (op_id,)).fetchone()
        if row is None:
            raise OpNotFoundError(f"no queued op with id {op_id!r}")
        return _to_checked_op(row)

    def pending(
        self,
        collection: str | None = None,
        item_id: str | int | None = None,
        *,
        states: Iterable[OpState | str] | None = None,
        limit: int | None = None,
    ) -> list[QueuedOp]:
        """Queued ops in queue order (priority, then seq).

        One item's ops are found through indexes; listing a collection or the whole queue
        reads all of it (an inspection, not a hot path; use ``limit`` on big queues).

        Args:
            collection: only this collection's ops.
            item_id: only this item's ops (needs ``collection``).
            states: the states to list; pending and leased by default.
            limit: the most ops to return.

        Raises:
            ValueError: for a bad argument.
        """
        self._check_open()
        if item_id is not None:
            if collection is None:
                raise ValueError("item_id needs a collection")
            _check_item_id(item_id)
        chosen = (
            (OpState.PENDING, OpState.LEASED)
            if states is None
            else tuple(sorted({OpState(s) for s in states}))
        )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be an int >= 0, not {limit!r}")
        wanted = json.dumps([s.value for s in chosen])
        with self.database.reading() as conn:
            if item_id is not None:
                # An item's ops sit in three partial indexes: its head, its waiting ops and
                # (found through the dead-letter index) its dead ops.
                key = (collection, item_id)
                rows = [
                    *conn.execute(_ITEM_HEAD, key),
                    *conn.execute(_ITEM_WAITING, key),
                    *conn.execute(_ITEM_DEAD, key),
                ]
                # Built before filtering, so a damaged row of the item is reported.
                ops = sorted(map(_to_checked_op, rows), key=lambda op: (op.priority, op.seq))
                return [op for op in ops if op.state in chosen][:limit]
            if collection is not None:
                cap = -1 if limit is None else limit
                rows = conn.execute(_PENDING_IN, (wanted, collection, cap)).fetchall()
            else:
                cap = -1 if limit is None else limit
                rows = conn.execute(_PENDING_ALL, (wanted, cap)).fetchall()
        return [_to_checked_op(row) for row in rows]

    def count_live(self, collection: str) -> int:
        """How many ops of ``collection`` are still to be sent (pending or leased).

        Counted from the item indexes (the collection's heads and waiting ops), not the
        whole table.
        """
        self._check_open()
        with self.database.reading() as conn:
            return int(conn.execute(_COUNT_LIVE, (collection,)).fetchone()[0])

    def is_pending(self, collection: str, item_id: str | int) -> bool:
        """Whether the item has an op still to be sent (pending or leased)."""
        self._check_open()
        with self.database.reading() as conn:
            return conn.execute(_HAS_LIVE, (collection, item_id)).fetchone() is not None

    def stats(self, collection: str | None = None) -> QueueStats:
        """Counts per priority and state, and the age of the oldest live op.

        Counting reads the whole queue once (about a tenth of a second per million ops).
        """
        self._check_open()
        now = self._clock.now()
        with self.database.reading() as conn:
            # Backoff times as they stand after a step back of the clock (see _timeline).
            later = now + _timeline.lag(conn, now)
            rows = conn.execute(_STATS, (later, collection)).fetchall()
            leased = conn.execute(_STATS_LEASED, (later, collection)).fetchall()
            quarantined = Quarantine.count(conn, collection)
        return _make_stats(collection, rows, leased, now, quarantined)

    async def stats_stream(self, *, poll_interval: float = 0.5) -> AsyncIterator[QueueStats]:
        """Yield the stats now, then each time they change; ends when the queue closes.

        Changes are noticed by polling cheap counters every ``poll_interval`` seconds of the
        queue's clock (``PRAGMA data_version`` for other connections, the connection's
        change count for this one); the stats are then recounted in a worker thread.
        Time passing alone (ages, backoffs running out) does not produce an item.

        Args:
            poll_interval: seconds between checks.
        """
        if not (math.isfinite(poll_interval) and poll_interval > 0):
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self._check_open()
        last_key: tuple[int, int] | None = None
        last: QueueStats | None = None
        while not self.closed:
            try:
                key = self._change_key()
                if key != last_key:
                    last_key = key
                    current = await anyio.to_thread.run_sync(self.stats)
                    if last is None or _without_age(current) != _without_age(last):
                        last = current
                        yield current
            except StoreClosedError:
                return
            await self._clock.sleep(poll_interval)

    def _change_key(self) -> tuple[int, int]:
        with self.database.reading() as conn:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            return int(version), conn.total_changes

    def next_eligible_at(
        self, *, priorities: Iterable[SyncPriority | int | str] | None = None
    ) -> float | None:
        """When the next op becomes eligible for a lease (for schedulers).

        Returns:
            A time at or before now if an op is eligible already; the end of the earliest
            backoff or lease otherwise (as it stands after any step back of the wall
            clock: never further away than the wait it was set with); ``None`` if no live
            op (of those priorities) exists.
        """
        self._check_open()
        allowed = (
            _ALL_PRIORITIES
            if priorities is None
            else tuple(sorted({SyncPriority.coerce(p) for p in priorities}))
        )
        if not allowed:
            return None
        names = json.dumps([int(p) for p in allowed])
        now = self._clock.now()
        with self.database.reading() as conn:
            stepped = _timeline.lag(conn, now) > 0
        if stepped and self._writable:
            # The clock went back: move the stored deadlines now, once, so that from here
            # on they count down like the clock (see _timeline).
            with self.database.transaction() as conn:
                _timeline.observe(conn, now)
        with self.database.reading() as conn:
            for priority in allowed:
                row = conn.execute(_NEXT_PENDING, (int(priority),)).fetchone()
                if row is not None:
                    return min(float(row[0]), now)
            candidates = [
                row[0]
                for sql in (_NEXT_DELAYED, _NEXT_LEASE_END)
                if (row := conn.execute(sql, (names,)).fetchone()) is not None
                and row[0] is not None
            ]
            # Stored deadlines as they stand after a step back of the clock (see _timeline).
            shift = _timeline.lag(conn, now) if candidates else 0.0
        return min(candidates) - shift if candidates else None

    # -- schema versions ---------------------------------------------------------------------

    def register_migration(self, collection: str, from_version: int, step: Migration) -> None:
        """Register the step that upgrades a payload of ``collection`` by one version.

        Args:
            collection: the collection.
            from_version: the version the step reads (it returns ``from_version + 1``).
            step: ``dict -> dict`` on the decoded payload.

        Raises:
            ValueError: for a bad argument.
        """
        self._check_collection(collection)
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise ValueError(f"from_version must be an int >= 1, not {from_version!r}")
        if not callable(step):
            raise ValueError("a migration step must be callable")  # noqa: TRY004
        self._steps[(collection, from_version)] = step

    def migration_steps(self) -> list[tuple[str, int]]:
        """The registered migration steps, as ``(collection, from_version)`` pairs."""
        return sorted(self._steps)

    def migration_step_map(self) -> dict[tuple[str, int], Migration]:
        """The registered migration steps, keyed by ``(collection, from_version)``."""
        return dict(self._steps)

    def set_schema_version(self, collection: str, version: int) -> None:
        """Declare the current schema version of ``collection``.

        Ops queued with an older version are upgraded when leased.

        Raises:
            ValueError: for a bad argument.
        """
        self._check_collection(collection)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, not {version!r}")
        self._versions[collection] = version

    def schema_version(self, collection: str) -> int | None:
        """The declared current schema version of ``collection``, if any."""
        return self._versions.get(collection)


def _without_age(stats: QueueStats) -> tuple[Any, ...]:
    return (
        stats.total,
        stats.pending,
        stats.leased,
        stats.dead,
        stats.blocked,
        stats.backing_off,
        stats.quarantined,
        tuple((p, tuple(sorted(s.items()))) for p, s in sorted(stats.counts.items())),
    )


def _make_stats(
    collection: str | None,
    rows: Iterable[Sequence[Any]],
    leased: Iterable[Sequence[Any]],
    now: float,
    quarantined: int = 0,
) -> QueueStats:
    """Stats from _STATS rows (nx_queue's states) and _STATS_LEASED rows (the leased ops,
    which nx_queue counts as pending heads)."""
    counts = {p: dict.fromkeys(_ALL_STATES, 0) for p in _ALL_PRIORITIES}
    blocked = backing_off = 0
    oldest: float | None = None
    for priority, state, count, n_blocked, n_backing_off, first_created in rows:
        if priority not in _PRIORITIES or state not in _STATES:
            raise CorruptDatabaseError(
                f"nx_queue holds {count} op(s) with priority={priority!r:.20}, "
                f"state={state!r:.20}: the file is damaged (nexus-store check lists them)"
            )
        counts[_PRIORITIES[priority]][_STATES[state]] = count
        blocked += n_blocked or 0
        backing_off += n_backing_off or 0
        if first_created is not None and (oldest is None or first_created < oldest):
            oldest = first_created
    for priority, count, n_later in leased:
        if priority not in _PRIORITIES:
            raise CorruptDatabaseError(
                f"nx_queue holds {count} leased op(s) with priority={priority!r:.20}: the file "
                "is damaged (nexus-store check lists them)"
            )
        by_state = counts[_PRIORITIES[priority]]
        by_state[OpState.PENDING] -= count
        by_state[OpState.LEASED] += count
        backing_off -= n_later or 0
    by_state = {s: sum(counts[p][s] for p in _ALL_PRIORITIES) for s in _ALL_STATES}
    return QueueStats(
        collection=collection,
        counts=counts,
        total=sum(by_state.values()),
        pending=by_state[OpState.PENDING],
        leased=by_state[OpState.LEASED],
        dead=by_state[OpState.DEAD],
        blocked=blocked,
        backing_off=backing_off,
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        quarantined=quarantined,
    )
