"""Settling leased ops: ack, nack (backoff or dead letter), release; and the dead letters.

Given the lease's fencing token, a settle changes only the ops still held under it and
reports the others as stale (see :mod:`._fencing`). Removing an item's head hands its
place, and the version it was acked with, to the item's next op.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from .._backoff import plan_failure
from .._exceptions import ErrorKind
from . import _timeline
from ._base import _BY_OP_ID, _HAS_LIVE, _LEASE_END, _UNBLOCK_NEXT, QueueBase
from ._fencing import Settled
from ._records import QueuedOp, _to_checked_op
from ._rules import _check_token, _handover, _op_ids
from ._schema import _COLUMNS, _HEAD, _OPS, _WAITING

__all__: list[str] = []

_RETRY_LATER = (
    "UPDATE nx_queue SET delayed = ?, attempts = ?, "
    "next_attempt_at = ?, last_error = ?, error_kind = ?, updated_at = ? WHERE seq = ?"
)
# After the head left or died, the item's oldest waiting op becomes its head.
_ANY_WAITING = "SELECT 1 FROM nx_queue WHERE chain = 1 LIMIT 1"
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
_REVIVE = (
    "UPDATE nx_queue SET seq = (SELECT max(seq) + 1 FROM nx_queue), state = 'pending', "
    "chain = ?, delayed = 0, attempts = 0, next_attempt_at = ?, "
    "updated_at = ? WHERE seq = ? RETURNING seq, priority"
)
_MOVE_LEASE = "UPDATE nx_leases SET seq = ? WHERE seq = ?"


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


class _Settling(QueueBase):
    """What happens to leased ops after the remote answered (or did not), and dead ops."""

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
