"""Who drains a file: the worker lease, a row in the file that one worker holds at a time.

Table ``nx_worker_lease`` holds the holder and when its lease expires; the holder renews
it every ``ttl / 3`` seconds. :func:`decide_lease` (pure) says whether a worker may take
it, given the row, the time and whether the holder is known to be gone (a holder on this
machine whose process no longer exists is taken over at once, without waiting for the
ttl: :func:`holder_gone`); :func:`clamp_lease` cuts a lease renewed at a wall time later
than now (the clock stepped back since) to one ttl from now. A new holder gives back the
ops the previous one had leased (:func:`release_stale_leases`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from enum import StrEnum

import psutil

from .._clock import Clock, SystemClock
from .._database import Database
from ..queue import OpState, PrioritySyncQueue

__all__ = [
    "LeaseAction",
    "LeaseDecision",
    "LeaseRow",
    "WorkerLease",
    "clamp_lease",
    "decide_lease",
    "holder_gone",
]

_LEASE_NAME = "drain"
_SCHEMA = """CREATE TABLE IF NOT EXISTS nx_worker_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    expires_at REAL NOT NULL
)"""


@dataclasses.dataclass(frozen=True)
class LeaseRow:
    """The drain lease as stored."""

    holder: str
    pid: int
    host: str
    acquired_at: float
    renewed_at: float
    expires_at: float


class LeaseAction(StrEnum):
    """What a worker does about the lease."""

    ACQUIRE = "acquire"
    """Nobody holds it: take it."""
    RENEW = "renew"
    """We hold it: extend it."""
    TAKE_OVER = "take_over"
    """Its holder let it expire (died or stalled): take it, and clean up after the holder."""
    WAIT = "wait"
    """Someone else holds it: wait until it expires."""


@dataclasses.dataclass(frozen=True)
class LeaseDecision:
    """The outcome of looking at the lease."""

    action: LeaseAction
    row: LeaseRow | None
    """The lease as it was before the decision."""

    @property
    def acquired(self) -> bool:
        """Whether the worker holds the lease now."""
        return self.action is not LeaseAction.WAIT

    @property
    def retry_at(self) -> float | None:
        """When to look again (the holder's expiry), for ``WAIT``."""
        if self.action is LeaseAction.WAIT and self.row is not None:
            return self.row.expires_at
        return None


def clamp_lease(row: LeaseRow, now: float) -> LeaseRow | None:
    """The lease as it stands after a step back of the wall clock, if there was one.

    A lease renewed after ``now`` was renewed before the clock went back: its end is
    counted from ``now``, never more than its length (``expires_at - renewed_at``).

    Returns:
        The clamped row to store, or ``None`` when the row needs no change.
    """
    if row.renewed_at <= now:
        return None
    length = max(0.0, row.expires_at - row.renewed_at)
    return dataclasses.replace(row, renewed_at=now, expires_at=now + length)


def decide_lease(
    row: LeaseRow | None, holder: str, now: float, *, holder_gone: bool = False
) -> LeaseDecision:
    """Decide about the drain lease: acquire, renew, take over, or wait.

    Args:
        row: the stored lease (``None``: no row).
        holder: this worker's holder id.
        now: the current time (wall clock, seconds since the epoch).
        holder_gone: the row's holder is known to have ended (see :func:`holder_gone`).
    """
    if row is None:
        return LeaseDecision(LeaseAction.ACQUIRE, None)
    if row.holder == holder:
        return LeaseDecision(LeaseAction.RENEW, row)
    if row.expires_at <= now or holder_gone:
        return LeaseDecision(LeaseAction.TAKE_OVER, row)
    return LeaseDecision(LeaseAction.WAIT, row)


def holder_gone(row: LeaseRow, host: str | None = None) -> bool:
    """Whether the lease's holder is known to have ended: it ran on this machine (same
    host name) and its process no longer exists. A holder elsewhere, or whose pid is in
    use (alive, stalled or reused), is not known to be gone: its lease runs out instead."""
    if row.host != (host if host is not None else socket.gethostname()):
        return False
    return row.pid > 0 and not psutil.pid_exists(row.pid)


class WorkerLease:
    """The drain lease in one database file (``nx_worker_lease``).

    Args:
        database: the store's database.
        holder: this worker's id (unique per process).
        ttl: seconds a lease lasts without renewal (a holder that died on this machine is
            taken over at once; one elsewhere, or stalled, after the ttl).
        clock: wall-clock time (shared by every process on the machine).
    """

    def __init__(
        self, database: Database, holder: str, *, ttl: float = 30.0, clock: Clock | None = None
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease ttl must be positive")
        self._database = database
        self.holder = holder
        self.ttl = float(ttl)
        self._clock: Clock = clock or SystemClock()
        with database.transaction() as conn:
            conn.execute(_SCHEMA)

    def current(self) -> LeaseRow | None:
        """The stored lease, if any."""
        with self._database.reading() as conn:
            row = conn.execute(
                "SELECT holder, pid, host, acquired_at, renewed_at, expires_at "
                "FROM nx_worker_lease WHERE name = ?",
                (_LEASE_NAME,),
            ).fetchone()
        return None if row is None else LeaseRow(*row)

    def try_acquire(self) -> LeaseDecision:
        """Acquire, renew or take over the lease if :func:`decide_lease` says so."""
        with self._database.transaction() as conn:
            row = conn.execute(
                "SELECT holder, pid, host, acquired_at, renewed_at, expires_at "
                "FROM nx_worker_lease WHERE name = ?",
                (_LEASE_NAME,),
            ).fetchone()
            now = self._clock.now()
            stored = None if row is None else LeaseRow(*row)
            clamped = None if stored is None else clamp_lease(stored, now)
            if clamped is not None:
                conn.execute(
                    "UPDATE nx_worker_lease SET renewed_at = ?, expires_at = ? "
                    "WHERE name = ? AND holder = ?",
                    (clamped.renewed_at, clamped.expires_at, _LEASE_NAME, clamped.holder),
                )
                stored = clamped
            gone = stored is not None and stored.holder != self.holder and holder_gone(stored)
            decision = decide_lease(stored, self.holder, now, holder_gone=gone)
            if decision.action is LeaseAction.RENEW:
                conn.execute(
                    "UPDATE nx_worker_lease SET renewed_at = ?, expires_at = ? WHERE name = ?",
                    (now, now + self.ttl, _LEASE_NAME),
                )
            elif decision.acquired:
                conn.execute(
                    "INSERT OR REPLACE INTO nx_worker_lease "
                    "(name, holder, pid, host, acquired_at, renewed_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        _LEASE_NAME,
                        self.holder,
                        os.getpid(),
                        socket.gethostname(),
                        now,
                        now,
                        now + self.ttl,
                    ),
                )
        return decision

    def renew(self) -> bool:
        """Extend the lease; False if this worker no longer holds it."""
        now = self._clock.now()
        with self._database.transaction() as conn:
            cursor = conn.execute(
                "UPDATE nx_worker_lease SET renewed_at = ?, expires_at = ? "
                "WHERE name = ? AND holder = ?",
                (now, now + self.ttl, _LEASE_NAME, self.holder),
            )
            return cursor.rowcount == 1

    def release(self) -> None:
        """Give the lease up (if held), so another worker takes over at once."""
        with self._database.transaction() as conn:
            conn.execute(
                "DELETE FROM nx_worker_lease WHERE name = ? AND holder = ?",
                (_LEASE_NAME, self.holder),
            )


def release_stale_leases(queue: PrioritySyncQueue) -> int:
    """Give back every leased op (after taking over from a dead worker: they were its)."""
    ids = [op.op_id for op in queue.pending(states=[OpState.LEASED])]
    return queue.release(ids) if ids else 0
