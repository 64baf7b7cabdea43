"""What every part of the queue shares: its state, its checks, and two writes.

:class:`~nexus_store.PrioritySyncQueue` is made of parts, one concept each: producing (enqueue),
leasing, settling (acks, nacks, releases, dead letters), reading (listings, stats,
schedules) and upgrading payloads of older schema versions. Each part is a class on top
of :class:`QueueBase`, which declares the state they share (set by the queue's
``__init__``) and the writes several of them make: dead-lettering an op and raising the
priority of an item's earlier ops.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from .._backoff import RetryBackoff
from .._clock import Clock
from .._database import Database
from .._exceptions import ErrorKind, StoreClosedError
from .._hlc import HybridLogicalClock
from ._rules import _MAX_COLLECTION
from ._schema import _COLUMNS, _OPS

if TYPE_CHECKING:
    from ._upgrades import Migration

__all__ = ["QueueBase"]

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
_LEASE_END = (
    "UPDATE nx_leases SET leased_until = NULL, token = NULL, updated_at = ?1 WHERE seq = ?2"
)
_KILL = (
    "UPDATE nx_queue SET state = 'dead', chain = 2, delayed = 0, "
    "attempts = ?, last_error = ?, error_kind = ?, updated_at = ? WHERE seq = ?"
)
_UNBLOCK_NEXT = (
    "UPDATE nx_queue SET chain = 0, updated_at = ?1 WHERE seq = (SELECT seq FROM nx_queue "
    "WHERE collection = ?2 AND item_id = ?3 AND chain = 1 ORDER BY seq LIMIT 1)"
)
_BY_OP_ID = "SELECT " + _COLUMNS + _OPS + "WHERE q.op_id = ?"
_HAS_LIVE = "SELECT 1 FROM nx_queue WHERE collection = ? AND item_id = ? AND chain = 0"
# The same for many items at once (json_each keeps 1 and "1" apart: no affinity either side).
_LIVE_AMONG = (
    "SELECT item_id FROM nx_queue WHERE collection = ? AND chain = 0 "
    "AND item_id IN (SELECT value FROM json_each(?))"
)


class QueueBase:
    """The state and shared steps of the parts of :class:`~nexus_store.PrioritySyncQueue`."""

    database: Database
    max_attempts: int
    backoff: RetryBackoff
    _clock: Clock
    _hlc: HybridLogicalClock
    _steps: dict[tuple[str, int], Migration]
    _versions: dict[str, int]
    _loaded: dict[tuple[str, int], Migration] | None
    _load_error: str
    _has_meta: bool
    _collections: set[str]
    _closed: bool
    _writable: bool
    _owns_database: bool

    @property
    def closed(self) -> bool:
        """Whether the queue (or its database) was closed."""
        return self._closed or self.database.closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.database.path}: the sync queue is closed")

    def _check_collection(self, collection: object) -> None:
        if not isinstance(collection, str) or not 0 < len(collection) <= _MAX_COLLECTION:
            raise ValueError(
                f"collection must be a non-empty string of at most {_MAX_COLLECTION} "
                f"characters, not {collection!r}"
            )
        self._collections.add(collection)

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
