"""Leasing: hand out the next eligible ops, most urgent first, under a fencing token.

Per priority, one statement picks the next heads in order and one records their leases
(in ``nx_leases``, beside the ops), so a lease reads the batch it returns and not the rest
of the queue. Ops in backoff whose time has come rejoin the eligible index first.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable

from .._priority import SyncPriority
from . import _timeline
from ._fencing import LeaseBatch, new_token
from ._records import _ALL_PRIORITIES, _to_op
from ._schema import _OPS
from ._upgrades import _Upgrading

__all__: list[str] = []

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


class _Leasing(_Upgrading):
    """The queue's lease (payloads of older versions are upgraded on the way out)."""

    # -- consuming ---------------------------------------------------------------------------

    def lease(
        self,
        max_ops: int = 100,
        lease_for: float = 30.0,
        *,
        collections: str | Iterable[str] | None = None,
        priorities: Iterable[SyncPriority | int | str] | None = None,
        chunk: int | None = None,
    ) -> LeaseBatch:
        """Hand out the next eligible ops, in queue order, until ``lease_for`` seconds pass.

        Eligible: pending, the oldest live op of its item, and not backing off; or leased
        with an expired lease. An op that never failed is always eligible, whatever the
        wall clock did since it was queued. Payloads of an older schema version are
        upgraded first; those that cannot be are dead-lettered and not returned.

        The ops are held under a new fencing token (``batch.token``): pass it to ``ack``,
        ``nack`` and ``release``, and a settle that comes after the lease passed to another
        holder changes nothing (see :mod:`._fencing`).

        Args:
            max_ops: the most ops to return.
            lease_for: seconds until the lease expires and the ops become eligible again.
            collections: only ops of these collections (all by default).
            priorities: only ops of these (effective) priorities (all by default); e.g.
                without ``LOW`` on a metered network.
            chunk: lease in transactions of at most this many ops, so that a writer beside
                the lease (an app saving) waits for one chunk, not for the whole batch.
                The chunks commit without waiting for the disk and one durable commit
                after the last makes them all durable before the batch is returned: one
                disk sync per batch, as for an unchunked lease. ``None``: one transaction.

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
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1
        ):
            raise ValueError(f"chunk must be a positive int or None, not {chunk!r}")
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
        leased = LeaseBatch(token=new_token())
        if chunk is None or chunk >= max_ops:
            with self.database.transaction() as conn:
                self._lease_into(conn, leased, max_ops, allowed, names, now, until)
            return leased
        # A lease must be durable before any of its ops is sent (a lease undone by a power
        # loss would let a later write coalesce into an op the server may hold): the chunks
        # skip the disk sync, and the watermark written after them syncs them all at once.
        while len(leased) < max_ops:
            want = min(chunk, max_ops - len(leased))
            before = len(leased)
            with self.database.transaction(durable=False) as conn:
                self._lease_into(conn, leased, before + want, allowed, names, now, until)
            if len(leased) - before < want:
                break
        if leased:
            # (Should this commit fail, the ops stay leased until their lease runs out.)
            with self.database.transaction() as conn:
                _timeline.mark(conn, now)
        return leased

    def _lease_into(  # noqa: PLR0917 - the lease's state, passed as it is
        self,
        conn: sqlite3.Connection,
        leased: LeaseBatch,
        max_ops: int,
        allowed: Iterable[SyncPriority],
        names: str | None,
        now: float,
        until: float,
    ) -> None:
        """Lease eligible ops into ``leased`` until it holds ``max_ops``, in one transaction."""
        token = leased.token
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
