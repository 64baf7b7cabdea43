"""Long leases: renewing a lease while its work goes on, and holding ops back on purpose.

A file transfer can outlast any fixed lease: its holder renews the lease (fenced by the
token, like every settle) while it works, so a crashed holder's op still comes back soon
after the crash. And an op can be *held*: put under a lease of a token nobody else has,
until a set time, so no sync run takes it (a record waiting for the blob it refers to is
held until the blob's upload is done, then released with the same token).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from . import _timeline
from ._base import QueueBase
from ._fencing import Settled
from ._rules import _check_token, _op_ids

__all__: list[str] = []

_RENEW = (
    "UPDATE nx_leases SET leased_until = ?1, updated_at = ?2 WHERE token = ?3 "
    "AND leased_until IS NOT NULL AND seq IN (SELECT seq FROM nx_queue WHERE op_id IN "
    "(SELECT value FROM json_each(?4))) RETURNING (SELECT op_id FROM nx_queue q "
    "WHERE q.seq = nx_leases.seq)"
)
# Live ops not leased now (a held op is leased): put under the holder's token.
_FREE = (
    "SELECT q.seq, q.op_id FROM nx_queue q LEFT JOIN nx_leases l ON l.seq = q.seq "
    "WHERE q.op_id IN (SELECT value FROM json_each(?1)) AND q.chain IN (0, 1) "
    "AND (l.leased_until IS NULL OR l.leased_until <= ?2)"
)
_HOLD = (
    "INSERT INTO nx_leases (seq, leased_until, lease_count, updated_at, token) "
    "VALUES (?1, ?2, 1, ?3, ?4) ON CONFLICT (seq) DO UPDATE SET leased_until = ?2, "
    "lease_count = lease_count + 1, updated_at = ?3, token = ?4"
)


class _Holding(QueueBase):
    """Lease renewal and holds."""

    def renew(self, op_ids: str | Iterable[str], lease_for: float, *, token: int) -> Settled:
        """Extend the lease of ops still held under ``token`` to ``lease_for`` seconds from now.

        Returns:
            How many leases were extended, with ``stale``: the ids no longer held under the
            token (their lease passed to another holder, or they were settled).
        """
        self._check_open()
        ids = _op_ids(op_ids)
        _check_token(token)
        if not (isinstance(lease_for, int | float) and math.isfinite(lease_for) and lease_for > 0):
            raise ValueError(f"lease_for must be a positive number of seconds, not {lease_for!r}")
        now = self._clock.now()
        with self.database.transaction(durable=False) as conn:
            _timeline.observe(conn, now)
            rows = conn.execute(_RENEW, (now + lease_for, now, token, json.dumps(ids))).fetchall()
        kept = {row[0] for row in rows}
        return Settled(len(kept), (op_id for op_id in ids if op_id not in kept))

    def hold(self, op_ids: str | Iterable[str], until: float, *, token: int) -> int:
        """Keep live ops that no run holds from being leased until ``until`` (or until
        ``release()`` with the same ``token``). Joins the caller's transaction.

        An op once held counts as handed out (nothing coalesces into it later; a later
        write of its item queues behind it). Ops already leased are left alone.

        Returns:
            How many ops are now held.
        """
        self._check_open()
        ids = _op_ids(op_ids)
        _check_token(token)
        now = self._clock.now()
        with self.database.transaction() as conn:
            _timeline.observe(conn, now)
            free = conn.execute(_FREE, (json.dumps(ids), now)).fetchall()
            conn.executemany(_HOLD, [(seq, until, now, token) for seq, _ in free])
        return len(free)
