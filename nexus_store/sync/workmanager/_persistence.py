"""Persistence of work specs, dependencies, tags and run history in the store's SQLite file.

All scheduler state lives in ``nx_work*`` tables of the same
:class:`~nexus_store._database.Database` as the items and the sync queue, so a restart
resumes the schedule (WM-22):

- ``nx_work``: one row per work spec (request, state, attempt and period counts, last
  enqueue time, stop reason, unique name, encoded input/output/progress);
- ``nx_work_tag``: tags (the worker name is one of them, WM-18);
- ``nx_work_dependency``: prerequisite edges of chained one-time work (WM-10);
- ``nx_work_run``: the run history (start, end, duration, outcome, error);
- ``nx_work_quota``: expedited grants inside the quota window (WM-14);
- ``nx_work_meta``: the schema version.

Payloads are stored as bytes encoded by :mod:`nexus_store._codec`; constraints as JSON.
Methods run on the caller's thread under the database lock; callers group writes with
:meth:`WorkStore.transaction`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..._codec import encode
from ..._database import Database
from ..._exceptions import SchemaError
from ._decisions import WorkSpec, recovered_after_crash
from ._records import RunRecord, WorkQuery
from ._states import RunOutcome, StopReason, WorkState
from ._tables import _SCHEMA, _SELECT, SCHEMA_VERSION, _spec

__all__ = ["SCHEMA_VERSION", "WorkStore"]

_FINISHED_STATES = (WorkState.SUCCEEDED.value, WorkState.FAILED.value, WorkState.CANCELLED.value)


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


# Waiting work whose schedule was set at a wall time later than now (the clock stepped
# back since): served by nx_work_by_state (state, last_enqueue_time, ...).
_ANY_FUTURE = (
    "SELECT 1 FROM nx_work WHERE state IN ('enqueued', 'blocked') AND last_enqueue_time > ? LIMIT 1"
)
_CLAMP_FUTURE = (
    "UPDATE nx_work SET last_enqueue_time = ?1 "
    "WHERE state IN ('enqueued', 'blocked') AND last_enqueue_time > ?1"
)


class WorkStore:
    """The ``nx_work*`` tables of one database.

    Args:
        database: the store's database (tables are created if missing).

    Raises:
        SchemaError: the file holds a newer work schema than this version understands.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        with database.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM nx_work_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO nx_work_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise SchemaError(
                    f"the work tables have schema version {row[0]}; this version of "
                    f"nexus-store understands up to {SCHEMA_VERSION}"
                )
            # Added later, nullable: older versions ignore it, so the schema version stays.
            columns = {r[1] for r in conn.execute("PRAGMA table_info(nx_work_run)")}
            if "message" not in columns:
                conn.execute("ALTER TABLE nx_work_run ADD COLUMN message TEXT")

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (re-entrant); ``durable=False`` commits without waiting
        for the disk (see :meth:`~nexus_store._database.Database.transaction`)."""
        with self.database.transaction(durable=durable) as conn:
            yield conn

    # -- specs ----------------------------------------------------------------------------

    def insert(self, spec: WorkSpec, *, now: float) -> WorkSpec:
        """Insert a new spec with its tags; returns it with its insertion ``seq``."""
        request = spec.request
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO nx_work (id, worker_name, state, unique_name, input, output,"
                " progress, constraints, initial_delay, interval, flex, backoff_policy,"
                " backoff_delay, backoff_on_system_interruptions, expedited,"
                " out_of_quota_policy, priority, execution_time_limit, run_attempt_count,"
                " period_count, generation, last_enqueue_time, stop_reason, enqueued_at,"
                f" updated_at) VALUES ({_placeholders(range(25))})",
                (
                    request.id,
                    request.worker_name,
                    *self._mutable_values(spec),
                    spec.enqueued_at,
                    now,
                ),
            )
            seq = int(cursor.lastrowid or 0)
            self._write_tags(conn, request.id, request.tags)
        return dataclasses.replace(spec, seq=seq)

    def save(self, spec: WorkSpec, *, now: float) -> None:
        """Write every field of an existing spec (state, counters, request, tags)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE nx_work SET worker_name = ?, state = ?, unique_name = ?, input = ?,"
                " output = ?, progress = ?, constraints = ?, initial_delay = ?, interval = ?,"
                " flex = ?, backoff_policy = ?, backoff_delay = ?,"
                " backoff_on_system_interruptions = ?, expedited = ?, out_of_quota_policy = ?,"
                " priority = ?, execution_time_limit = ?, run_attempt_count = ?,"
                " period_count = ?, generation = ?, last_enqueue_time = ?, stop_reason = ?,"
                " updated_at = ? WHERE id = ?",
                (spec.request.worker_name, *self._mutable_values(spec), now, spec.id),
            )
            conn.execute("DELETE FROM nx_work_tag WHERE work_id = ?", (spec.id,))
            self._write_tags(conn, spec.id, spec.request.tags)

    @staticmethod
    def _mutable_values(spec: WorkSpec) -> tuple[Any, ...]:
        request = spec.request
        return (
            spec.state.value,
            spec.unique_name,
            encode(request.input),
            encode(spec.output),
            encode(spec.progress),
            request.constraints.model_dump_json(),
            request.initial_delay,
            request.interval,
            request.flex,
            request.backoff_policy.value,
            request.backoff_delay,
            int(request.backoff_on_system_interruptions),
            int(request.expedited),
            None if request.out_of_quota_policy is None else request.out_of_quota_policy.value,
            int(request.priority),
            request.execution_time_limit,
            spec.run_attempt_count,
            spec.period_count,
            spec.generation,
            spec.last_enqueue_time,
            int(spec.stop_reason),
        )

    @staticmethod
    def _write_tags(conn: sqlite3.Connection, work_id: str, tags: Iterable[str]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO nx_work_tag (tag, work_id) VALUES (?, ?)",
            [(tag, work_id) for tag in sorted(tags)],
        )

    def get(self, work_id: str) -> WorkSpec | None:
        """The spec with this id, if any."""
        rows = self.database.execute(f"{_SELECT} WHERE w.id = ?", (work_id,))
        return _spec(rows[0]) if rows else None

    def find(self, query: WorkQuery) -> list[WorkSpec]:
        """Specs selected by ``query`` (AND of components, OR of values), in insertion order."""
        where: list[str] = []
        params: list[Any] = []
        if query.ids:
            ids = sorted(query.ids)
            where.append(f"w.id IN ({_placeholders(ids)})")
            params += ids
        if query.states:
            states = sorted(state.value for state in query.states)
            where.append(f"w.state IN ({_placeholders(states)})")
            params += states
        if query.unique_names:
            names = sorted(query.unique_names)
            where.append(f"w.unique_name IN ({_placeholders(names)})")
            params += names
        if query.tags:
            tags = sorted(query.tags)
            where.append(
                "EXISTS (SELECT 1 FROM nx_work_tag t WHERE t.work_id = w.id"
                f" AND t.tag IN ({_placeholders(tags)}))"
            )
            params += tags
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY w.seq"
        return [_spec(row) for row in self.database.execute(sql, params)]

    def in_state(self, state: WorkState) -> list[WorkSpec]:
        """Specs in ``state``, oldest enqueue first."""
        rows = self.database.execute(
            f"{_SELECT} WHERE w.state = ? ORDER BY w.last_enqueue_time, w.seq", (state.value,)
        )
        return [_spec(row) for row in rows]

    def with_name(self, name: str) -> list[WorkSpec]:
        """Specs holding the unique name ``name``, in insertion order."""
        rows = self.database.execute(f"{_SELECT} WHERE w.unique_name = ? ORDER BY w.seq", (name,))
        return [_spec(row) for row in rows]

    def try_set_running(self, work_id: str, *, now: float) -> WorkSpec | None:
        """ENQUEUED -> RUNNING and ``run_attempt_count + 1`` in one statement (WM-5).

        Returns:
            The running spec, or ``None`` if the work was not ENQUEUED.
        """
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE nx_work SET state = ?, run_attempt_count = run_attempt_count + 1,"
                " updated_at = ? WHERE id = ? AND state = ?",
                (WorkState.RUNNING.value, now, work_id, WorkState.ENQUEUED.value),
            )
            if cursor.rowcount != 1:
                return None
            return self.get(work_id)

    def set_progress(self, work_id: str, progress: bytes, *, now: float) -> bool:
        """Store progress if the work is RUNNING; returns whether it was stored (WM-20)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE nx_work SET progress = ?, updated_at = ? WHERE id = ? AND state = ?",
                (progress, now, work_id, WorkState.RUNNING.value),
            )
            return cursor.rowcount == 1

    def clamp_future(self, *, now: float) -> int:
        """Work waiting with a schedule set after ``now`` was scheduled before the wall
        clock stepped back: count its delays from ``now`` instead (never longer than
        their nominal length), so the step stalls nothing.

        Returns:
            How many rows were moved (0 unless the clock stepped back).
        """
        with self.database.reading() as conn:
            if conn.execute(_ANY_FUTURE, (now,)).fetchone() is None:
                return 0
        with self.transaction() as conn:
            return conn.execute(_CLAMP_FUTURE, (now,)).rowcount

    def recover(self, *, now: float) -> list[WorkSpec]:
        """Return RUNNING rows to ENQUEUED and close open runs as interrupted (WM-22)."""
        with self.transaction() as conn:
            recovered = [recovered_after_crash(spec) for spec in self.in_state(WorkState.RUNNING)]
            for spec in recovered:
                self.save(spec, now=now)
            conn.execute(
                "UPDATE nx_work_run SET ended_at = ?, outcome = ?, stop_reason = ?, error = ?"
                " WHERE ended_at IS NULL",
                (
                    now,
                    RunOutcome.INTERRUPTED.value,
                    int(StopReason.UNKNOWN),
                    "the process ended during the run",
                ),
            )
        return recovered

    # -- dependencies ---------------------------------------------------------------------

    def add_dependencies(self, work_id: str, prerequisite_ids: Iterable[str]) -> None:
        """Record that ``work_id`` runs after each of ``prerequisite_ids``."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO nx_work_dependency (work_id, prerequisite_id) VALUES (?, ?)",
                [(work_id, prerequisite) for prerequisite in prerequisite_ids],
            )

    def prerequisites(self, work_id: str) -> list[str]:
        """Ids ``work_id`` waits for."""
        rows = self.database.execute(
            "SELECT prerequisite_id FROM nx_work_dependency WHERE work_id = ?", (work_id,)
        )
        return [row[0] for row in rows]

    def dependents(self, work_id: str) -> list[str]:
        """Ids waiting for ``work_id``."""
        rows = self.database.execute(
            "SELECT work_id FROM nx_work_dependency WHERE prerequisite_id = ?", (work_id,)
        )
        return [row[0] for row in rows]

    # -- run history ----------------------------------------------------------------------

    def start_run(self, spec: WorkSpec, *, started_at: float, expedited: bool) -> int:
        """Open a run record for a spec that just became RUNNING; returns its id."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO nx_work_run (work_id, worker_name, attempt, expedited, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    spec.id,
                    spec.request.worker_name,
                    spec.run_attempt_count - 1,
                    int(expedited),
                    started_at,
                ),
            )
            return int(cursor.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        *,
        ended_at: float,
        duration: float,
        outcome: RunOutcome,
        stop_reason: StopReason | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        """Close a run record."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE nx_work_run SET ended_at = ?, duration = ?, outcome = ?,"
                " stop_reason = ?, error = ?, message = ? WHERE run_id = ?",
                (
                    ended_at,
                    duration,
                    outcome.value,
                    None if stop_reason is None else int(stop_reason),
                    error,
                    message,
                    run_id,
                ),
            )

    def runs(self, work_id: str | None = None, *, limit: int = 100) -> list[RunRecord]:
        """The most recent runs (of one work, or of all), newest first."""
        sql = (
            "SELECT run_id, work_id, worker_name, attempt, expedited, started_at, ended_at,"
            " duration, outcome, stop_reason, error, message FROM nx_work_run"
        )
        params: list[Any] = []
        if work_id is not None:
            sql += " WHERE work_id = ?"
            params.append(work_id)
        sql += " ORDER BY run_id DESC LIMIT ?"
        params.append(max(0, limit))
        return [
            RunRecord(
                run_id=row[0],
                work_id=row[1],
                worker_name=row[2],
                attempt=row[3],
                expedited=bool(row[4]),
                started_at=row[5],
                ended_at=row[6],
                duration=row[7],
                outcome=None if row[8] is None else RunOutcome(row[8]),
                stop_reason=None if row[9] is None else StopReason(row[9]),
                error=row[10],
                message=row[11],
            )
            for row in self.database.execute(sql, params)
        ]

    # -- expedited quota ------------------------------------------------------------------

    def expedited_grants_since(self, since: float) -> int:
        """How many expedited requests were granted after ``since``."""
        rows = self.database.execute(
            "SELECT count(*) FROM nx_work_quota WHERE granted_at > ?", (since,)
        )
        return int(rows[0][0])

    def grant_expedited(self, *, now: float, forget_before: float) -> None:
        """Record one expedited grant and forget grants older than the window."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM nx_work_quota WHERE granted_at <= ?", (forget_before,))
            conn.execute("INSERT INTO nx_work_quota (granted_at) VALUES (?)", (now,))

    # -- housekeeping ---------------------------------------------------------------------

    def prune(self, *, finished_before: float) -> int:
        """Delete finished work last changed before ``finished_before`` and its run history.

        Work that unfinished work still depends on is kept. Returns how many specs went.
        """
        states = _placeholders(_FINISHED_STATES)
        with self.transaction() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM nx_work w WHERE state IN ({states}) AND updated_at < ?"
                    " AND NOT EXISTS (SELECT 1 FROM nx_work_dependency d JOIN nx_work x"
                    f" ON x.id = d.work_id WHERE d.prerequisite_id = w.id"
                    f" AND x.state NOT IN ({states}))",
                    (*_FINISHED_STATES, finished_before, *_FINISHED_STATES),
                ).fetchall()
            ]
            for work_id in ids:
                conn.execute("DELETE FROM nx_work_run WHERE work_id = ?", (work_id,))
                conn.execute("DELETE FROM nx_work WHERE id = ?", (work_id,))
        return len(ids)
