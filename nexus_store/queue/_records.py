"""The records the queue hands out (:class:`QueuedOp`, :class:`QueueStats`), read from rows.

Rows are read through :data:`._schema._COLUMNS`; every value is checked against the table's
schema, so a damaged file raises :class:`~nexus_store.CorruptDatabaseError` naming the row
instead of handing out a broken record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from .._exceptions import CorruptDatabaseError, ErrorKind
from .._priority import SyncPriority
from .._trusted import trusted_builder
from ._schema import _HEAD, _OUT, _WAITING

__all__ = ["OpKind", "OpState", "QueueStats", "QueuedOp", "damage_of"]


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


_ALL_PRIORITIES: tuple[SyncPriority, ...] = tuple(sorted(SyncPriority))
_ALL_STATES: tuple[OpState, ...] = tuple(OpState)
_KINDS = {k.value: k for k in OpKind}
_STATES = {s.value: s for s in OpState}
_ERROR_KINDS = {k.value: k for k in ErrorKind}
_PRIORITIES = {int(p): p for p in SyncPriority}
_KIND_VALUES = {k: str(k.value) for k in OpKind}
_PRIORITY_VALUES = {p: int(p) for p in SyncPriority}

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
