"""Remote pauses: when a remote must not be asked anything, kept in the file.

A remote that answers 429 or 503 with ``Retry-After`` asked for quiet until then, from this
client as a whole: not from one op, one run or one process. So the deadline is kept in the
store's file (table ``nx_remote``, one row per remote identity), where every sync run —
``store.sync()`` in a loop, the background service, a worker in another process — reads it
before sending anything. The same row keeps:

- a **backoff** for a remote that fails without saying when to come back: full jitter,
  ``[0, min(cap, base * 2**(n-1))]`` after the ``n``-th failure in a row, so many clients
  that failed together do not come back together. A remote that cannot be reached or is
  down (``UNAVAILABLE``: a connection failure, 5xx without ``Retry-After``) is looked at
  again soon, cheaply: the next run first *probes* it (``GET /health`` for
  ``HttpBackend``) and sends nothing else until it answers, so the probe backoff is short
  (0.5 s doubling, at most 4 s: a healed remote is noticed within 4 s). A 429 without
  ``Retry-After`` (``RATE_LIMITED``) waits the remote backoff (1 s doubling, at most 60 s);
- an **auth pause** after the remote refused our credentials: runs still try (the backend
  does not resend a token the server refused, so a try costs no request until the token
  provider has a new one); schedulers look again every ``auth_recheck`` seconds.

A successful exchange ends the pause (and the backoff count). Deadlines are wall times moved
back with the others when the clock steps back (:mod:`nexus_store.queue._timeline`).

The decisions (:func:`plan_pause`, :func:`remote_identity`) are pure; :class:`RemotePauses`
reads and writes the table.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum

from ..._backoff import RetryBackoff
from ..._database import Database
from ..._exceptions import AuthError, RateLimitedError, RemoteError, ServerUnavailableError
from ...queue import _timeline

__all__ = [
    "DEFAULT_AUTH_RECHECK",
    "DEFAULT_PROBE_BACKOFF",
    "DEFAULT_REMOTE_BACKOFF",
    "PauseReason",
    "RemotePause",
    "RemotePauses",
    "plan_pause",
    "remote_identity",
]

DEFAULT_AUTH_RECHECK = 5.0
"""Seconds between looks at a remote paused for refused credentials."""


def DEFAULT_REMOTE_BACKOFF() -> RetryBackoff:  # noqa: N802 - a factory read like a constant
    """The backoff of a remote failing without ``Retry-After``: full jitter, 1 s doubling,
    capped at 60 s (a healed network is noticed within a minute)."""
    return RetryBackoff(base=1.0, factor=2.0, max_delay=60.0)


def DEFAULT_PROBE_BACKOFF() -> RetryBackoff:  # noqa: N802 - a factory read like a constant
    """The backoff between probes of a remote that could not be reached or was down: full
    jitter, 0.5 s doubling, capped at 4 s (a probe is one small request; a healed remote
    is noticed within 4 s)."""
    return RetryBackoff(base=0.5, factor=2.0, max_delay=4.0)


class PauseReason(StrEnum):
    """Why a remote is paused."""

    RATE_LIMITED = "rate_limited"
    """It answered 429 (or 503) with ``Retry-After``, or 429 without it (backoff)."""
    UNAVAILABLE = "unavailable"
    """It could not be reached, or failed, several times in a row (backoff)."""
    AUTH = "auth"
    """It refused our credentials; runs try again when the token may have changed."""


@dataclass(frozen=True, slots=True)
class RemotePause:
    """A remote's pause, as stored (deadlines after any step back of the clock)."""

    remote: str
    reason: PauseReason
    until: float
    """Wall time before which nothing is sent (for ``AUTH``: when to look again)."""
    failures: int
    """Failed exchanges in a row (the backoff's exponent)."""

    def blocks(self, now: float) -> bool:
        """Whether a run starting at ``now`` must send nothing (an auth pause never blocks:
        trying costs no request while the refused token is all there is)."""
        return self.reason is not PauseReason.AUTH and now < self.until


def remote_identity(backend: object) -> str:
    """The key of a backend's pause: its base URL if it has one (the same server for every
    process), else that of the backend it wraps, else its class."""
    for _ in range(8):  # wrappers of wrappers, bounded
        url = getattr(backend, "base_url", None)
        if isinstance(url, str) and url:
            return url
        inner = getattr(backend, "inner", None)
        if inner is None:
            break
        backend = inner
    kind = type(backend)
    return f"{kind.__module__}.{kind.__qualname__}"


def plan_pause(
    error: RemoteError,
    *,
    failures: int,
    now: float,
    backoff: RetryBackoff,
    auth_recheck: float = DEFAULT_AUTH_RECHECK,
    probe_backoff: RetryBackoff | None = None,
) -> tuple[PauseReason, float]:
    """The pause a remote error calls for: its reason and deadline.

    Args:
        error: what the remote (or the backend on its behalf) raised.
        failures: failed exchanges in a row before this one.
        now: wall time.
        backoff: the backoff of a remote rate-limiting us without ``Retry-After``.
        auth_recheck: seconds until an auth pause is looked at again.
        probe_backoff: the backoff of an ``UNAVAILABLE`` remote, which the next run
            probes before sending anything (``backoff`` if not given).
    """
    if isinstance(error, AuthError):
        return PauseReason.AUTH, now + auth_recheck
    asked = isinstance(error, RateLimitedError | ServerUnavailableError)
    if asked and error.retry_after is not None:
        return PauseReason.RATE_LIMITED, now + error.retry_after
    if isinstance(error, RateLimitedError):
        return PauseReason.RATE_LIMITED, now + backoff.delay(failures + 1)
    return PauseReason.UNAVAILABLE, now + (probe_backoff or backoff).delay(failures + 1)


_SCHEMA = """CREATE TABLE IF NOT EXISTS nx_remote (
    remote TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    paused_until REAL NOT NULL,
    set_at REAL NOT NULL,
    failures INTEGER NOT NULL
)"""
_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_remote'"
_GET = "SELECT reason, paused_until, failures FROM nx_remote WHERE remote = ?"
_PUT = (
    "INSERT INTO nx_remote (remote, reason, paused_until, set_at, failures) "
    "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (remote) DO UPDATE SET reason = ?2, "
    "paused_until = ?3, set_at = ?4, failures = ?5"
)
_CLEAR = "DELETE FROM nx_remote WHERE remote = ?"
_REASONS = {r.value: r for r in PauseReason}


class RemotePauses:
    """The pause of one remote in one database file.

    Args:
        database: the store's database.
        remote: the remote's identity (:func:`remote_identity`).
    """

    def __init__(self, database: Database, remote: str) -> None:
        self._database = database
        self.remote = remote
        self._ready = False

    def _has_table(self, conn: sqlite3.Connection) -> bool:
        if not self._ready:
            self._ready = conn.execute(_EXISTS).fetchone() is not None
        return self._ready

    def current(self, now: float) -> RemotePause | None:
        """The remote's pause, if any (past deadlines included: the failure count
        matters until a success clears it)."""
        with self._database.reading() as conn:
            if not self._has_table(conn):
                return None
            row = conn.execute(_GET, (self.remote,)).fetchone()
            if row is None:
                return None
            stepped = _timeline.lag(conn, now) > 0
        if stepped:
            # The clock went back: move the stored deadlines once, now (see _timeline).
            with self._database.transaction() as conn:
                _timeline.observe(conn, now)
                row = conn.execute(_GET, (self.remote,)).fetchone()
            if row is None:
                return None
        reason, until, failures = row
        return RemotePause(self.remote, _REASONS[reason], float(until), int(failures))

    def pause(
        self,
        error: RemoteError,
        *,
        now: float,
        backoff: RetryBackoff,
        auth_recheck: float,
        probe_backoff: RetryBackoff | None = None,
    ) -> RemotePause:
        """Record that the remote failed with ``error``; returns the pause now in force.

        Never shortens a pause already recorded (another process may have been told to
        wait longer).
        """
        with self._database.transaction() as conn:
            if not self._has_table(conn):
                conn.execute(_SCHEMA)
                self._ready = True
            _timeline.observe(conn, now)
            row = conn.execute(_GET, (self.remote,)).fetchone()
            failures = 0 if row is None or row[0] == PauseReason.AUTH else int(row[2])
            reason, until = plan_pause(
                error,
                failures=failures,
                now=now,
                backoff=backoff,
                auth_recheck=auth_recheck,
                probe_backoff=probe_backoff,
            )
            if row is not None and row[0] != PauseReason.AUTH and reason is not PauseReason.AUTH:
                until = max(until, float(row[1]))
            count = failures + (reason is not PauseReason.AUTH)
            conn.execute(_PUT, (self.remote, reason.value, until, now, count))
        return RemotePause(self.remote, reason, until, count)

    def clear(self) -> bool:
        """A successful exchange: the pause and the failure count end. Returns whether
        there was one."""
        with self._database.reading() as conn:
            if not self._has_table(conn) or conn.execute(_GET, (self.remote,)).fetchone() is None:
                return False
        with self._database.transaction() as conn:
            return conn.execute(_CLEAR, (self.remote,)).rowcount > 0
