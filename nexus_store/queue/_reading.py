"""Reading the queue: one op, listings, counts, stats (and their stream), the next deadline.

One item's ops are found through indexes; listing a collection or the whole queue reads
all of it (an inspection, not a hot path). Stats count ``nx_queue`` once and the leased
ops apart. Deadlines are read as they stand after any step back of the wall clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence

import anyio.to_thread

from .._exceptions import OpNotFoundError, StoreClosedError
from .._priority import SyncPriority
from .._quarantine import Quarantine
from . import _timeline
from ._base import _BY_OP_ID, _HAS_LIVE, _LIVE_AMONG, QueueBase
from ._records import (
    _ALL_PRIORITIES,
    OpState,
    QueuedOp,
    QueueStats,
    _make_stats,
    _to_checked_op,
    _without_age,
)
from ._rules import _check_item_id
from ._schema import _COLUMNS, _OPS, _STATE

__all__: list[str] = []

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


class _Reading(QueueBase):
    """Introspection of the queue: records, listings, counts, stats and schedules."""

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

    def pending_among(self, collection: str, item_ids: Sequence[str | int]) -> set[str | int]:
        """Which of ``item_ids`` have an op still to be sent (:meth:`is_pending` for many
        items in one query)."""
        self._check_open()
        if not item_ids:
            return set()
        with self.database.reading() as conn:
            rows = conn.execute(_LIVE_AMONG, (collection, json.dumps(list(item_ids))))
            return {row[0] for row in rows}

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
