"""Persisted deadlines that survive steps of the wall clock.

Deadlines kept in the file (an op's retry time ``next_attempt_at``, a lease's
``leased_until``, a remote's pause) must be wall-clock times: several processes read them,
and a process may restart. But the wall clock can be stepped (NTP, a laptop resuming, a
user fixing the date). Stepped *forward*, a deadline only comes early: a retry is tried
sooner, a lease ends sooner (which fencing tokens make safe). Stepped *back*, every
deadline set before the step would wait for the clock to catch up: an hour's step, an
hour's stall.

So the file keeps a watermark (table ``nx_clock``): the latest wall time at which a
deadline was set, up to ``SLACK`` seconds. A clock reading below the watermark proves
the clock went back by at least the difference (on one machine time only moves forward
otherwise). Then every stored deadline is moved back by that difference, in the same
transaction that noticed it (:func:`observe`), so it keeps, at most, the wait it had left
when the clock was last read before the step — never more than its nominal length.
Readers that do not write use :func:`lag` to see the deadlines as they will be after
that move. Deadlines of tables that do not exist in the file are skipped.

Only a step back larger than ``SLACK`` is noticed; a smaller one delays a deadline by at
most that much.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA", "SLACK", "lag", "mark", "observe", "read_watermark"]

SLACK = 1.0
"""Seconds the watermark may trail the latest deadline set (it is rewritten at most once
per ``SLACK`` seconds, so a busy queue does not write it on every lease)."""

SCHEMA = "CREATE TABLE IF NOT EXISTS nx_clock (name TEXT PRIMARY KEY, wall REAL NOT NULL)"

_READ = "SELECT wall FROM nx_clock WHERE name = 'deadlines'"
_WRITE = (
    "INSERT INTO nx_clock (name, wall) VALUES ('deadlines', ?) "
    "ON CONFLICT (name) DO UPDATE SET wall = excluded.wall"
)
_RAISE = (
    "INSERT INTO nx_clock (name, wall) VALUES ('deadlines', ?) "
    "ON CONFLICT (name) DO UPDATE SET wall = max(wall, excluded.wall)"
)
_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
# Every persisted deadline of the package, moved back by ?1 seconds (a step back noticed at
# wall time ?2). Deadlines already passed stay passed.
_REBASE: tuple[tuple[str, str], ...] = (
    (
        "nx_queue",
        "UPDATE nx_queue SET next_attempt_at = next_attempt_at - ?1 "
        "WHERE delayed = 1 AND next_attempt_at > ?2",
    ),
    (
        "nx_leases",
        "UPDATE nx_leases SET leased_until = leased_until - ?1 "
        "WHERE leased_until IS NOT NULL AND leased_until > ?2",
    ),
    (
        "nx_remote",
        "UPDATE nx_remote SET paused_until = paused_until - ?1, set_at = set_at - ?1 "
        "WHERE paused_until > ?2",
    ),
)


def read_watermark(conn: sqlite3.Connection) -> float | None:
    """The stored watermark (``None``: none yet, or no ``nx_clock`` table)."""
    try:
        row = conn.execute(_READ).fetchone()
    except sqlite3.OperationalError:  # a file made before the table existed, opened read-only
        return None
    return None if row is None else float(row[0])


def lag(conn: sqlite3.Connection, now: float) -> float:
    """Seconds the clock reads behind the watermark: how far stored deadlines are to be
    moved back (0 unless the clock was stepped back since they were set)."""
    mark = read_watermark(conn)
    return 0.0 if mark is None or now >= mark else mark - now


def observe(conn: sqlite3.Connection, now: float) -> float:
    """Call in a write transaction before setting or judging deadlines at wall time ``now``.

    Moves every stored deadline back if the clock was stepped back, and advances the
    watermark.

    Returns:
        The seconds deadlines were moved back (0 almost always).
    """
    mark = read_watermark(conn)
    if mark is None:
        conn.execute(_WRITE, (now,))
        return 0.0
    if now >= mark:
        if now > mark + SLACK:
            conn.execute(_WRITE, (now,))
        return 0.0
    shift = mark - now
    for table, statement in _REBASE:
        if conn.execute(_EXISTS, (table,)).fetchone() is not None:
            conn.execute(statement, (shift, now))
    conn.execute(_WRITE, (now,))
    return shift


def mark(conn: sqlite3.Connection, now: float) -> None:
    """Write the watermark for deadlines set at wall time ``now`` (after :func:`observe` in
    the same or an earlier transaction), whether or not it moves: a write, so that a
    durable commit of it also syncs the commits before it that skipped the disk."""
    conn.execute(_RAISE, (now,))
