"""What the dashboard shows, read from the store's file: the JSON behind the page.

:func:`read_state` takes one consistent look at the file (one read transaction) and
returns a :class:`DashboardState`: the sync status, the queue by priority and state with
the oldest pending age, transfers in progress, the last runs, dead letters, quarantined
remote changes, the jobs and the worker's drain lease. Nothing here writes.

**Transfers** are read through one seam, :func:`read_transfers`: the queued transfer ops
of the files feature (collection ``nx_files``: uploads to the sync server, POSTs to other
endpoints, prefetched downloads), each with its file's name and size and the bytes the
server acknowledged so far (the resume point the transfer keeps in ``nx_transfers``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._database import Database
from .._priority import SyncPriority
from .._quarantine import Quarantine, QuarantinedChange
from ..files._ops import decode_spec
from ..files._tables import FILES_COLLECTION
from ..queue import OpState, PrioritySyncQueue
from ..sync._jobs import SYNC_JOB, JobInfo, JobTable
from ..sync._task import TaskRun
from ..sync.workmanager._adapter import _run_to_task_run, job_states
from ..sync.workmanager._persistence import WorkStore
from ..sync.workmanager._records import WorkInfo, WorkQuery

__all__ = [
    "DashboardState",
    "DeadLetter",
    "Quarantined",
    "QueueView",
    "Transfer",
    "read_state",
    "read_transfers",
]

_DIRECTIONS = {"up": "upload", "post": "upload (POST)", "get": "download"}
_TRANSFERS_SHOWN = 200


class QueueView(BaseModel):
    """The queue by priority and state."""

    model_config = ConfigDict(frozen=True)

    counts: dict[str, dict[str, int]]
    """``{priority: {state: ops}}`` for every priority and state."""
    pending: int
    leased: int
    dead: int
    backing_off: int
    oldest_pending_age: float | None
    """Seconds since the oldest live op was created."""


class Transfer(BaseModel):
    """A blob moving to or from the remote."""

    model_config = ConfigDict(frozen=True)

    op_id: str
    collection: str
    item_id: str
    """The transfer's key in the queue (``up:<sha256>``, ``post:<upload id>``, ...)."""
    direction: str
    """``upload``, ``upload (POST)`` or ``download``."""
    state: str
    name: str | None = None
    """The file's name, as the app gave it."""
    priority: str = "NORMAL"
    attempts: int = 0
    bytes_done: int | None = None
    """Bytes the server acknowledged so far (where the transfer resumes)."""
    bytes_total: int | None = None


class DeadLetter(BaseModel):
    """A dead-lettered op and why."""

    model_config = ConfigDict(frozen=True)

    op_id: str
    collection: str
    item_id: str
    kind: str
    priority: str
    attempts: int
    reason: str
    updated_at: float


class Quarantined(BaseModel):
    """A pulled change kept because it did not fit the local model."""

    model_config = ConfigDict(frozen=True)

    id: int
    collection: str
    item_id: str
    reason: str
    attempts: int
    created_at: float


class DashboardState(BaseModel):
    """Everything the page shows (``GET /api/state``; each ``state`` event of
    ``GET /api/events`` carries one)."""

    model_config = ConfigDict(frozen=True)

    at: float
    path: str
    status: str
    """The sync status (``idle``, ``scheduled``, ``running``, ``completed``, ``failed``)."""
    transitions: list[tuple[float, str]] = Field(default_factory=list)
    """Status changes this page has seen, newest last: (time, status)."""
    queue: QueueView
    transfers: list[Transfer]
    runs: list[TaskRun]
    """The last runs of every job, newest first."""
    dead: list[DeadLetter]
    quarantined: list[Quarantined]
    jobs: list[JobInfo]
    worker: str | None
    """Who holds the drain lease (a worker process), if anyone."""


_ACKED = "SELECT op_key, acked FROM nx_transfers"


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }


def read_transfers(
    queue: PrioritySyncQueue, acked: dict[str, int], *, limit: int = _TRANSFERS_SHOWN
) -> list[Transfer]:
    """The transfers in the queue, in queue order (see the module docstring).

    Args:
        queue: the store's queue.
        acked: the bytes acknowledged per transfer key (``nx_transfers``).
        limit: the most transfers to list.
    """
    found = []
    for op in queue.pending(FILES_COLLECTION, limit=limit):
        try:
            spec = decode_spec(op.payload)
        except ValueError:
            continue  # a damaged op: the sync run dead-letters it with the reason
        found.append(
            Transfer(
                op_id=op.op_id,
                collection=op.collection,
                item_id=str(op.item_id),
                direction=_DIRECTIONS.get(spec.kind, spec.kind),
                state=op.state.value,
                name=spec.name,
                priority=op.priority.name,
                attempts=op.attempts,
                bytes_done=acked.get(str(op.item_id), 0),
                bytes_total=spec.size,
            )
        )
    return found


def _outcome_status(run: TaskRun) -> str:
    if run.outcome == "success":
        return "completed"
    if run.outcome in ("failure", "retry", "interrupted"):
        return "failed"
    return "idle"  # stopped or cancelled: nothing went wrong with the data


def _status(work: list[WorkInfo], runs: list[TaskRun]) -> str:
    sync_work = [info for info in work if info.worker_name == SYNC_JOB]
    if any(info.state.value == "running" for info in sync_work):
        return "running"
    last = next((run for run in runs if run.task_id == SYNC_JOB and run.ended_at), None)
    if last is not None and last.ended_at is not None and time.time() - last.ended_at < 5:
        return _outcome_status(last)
    if any(info.state.value in ("enqueued", "blocked") for info in sync_work):
        return "scheduled"
    if last is not None:
        return _outcome_status(last)
    return "idle"


def _lease(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(
        "SELECT holder, pid, expires_at FROM nx_worker_lease WHERE name = 'drain'"
    ).fetchone()
    if row is None or float(row[2]) < time.time():
        return None
    return f"{row[0]} (pid {row[1]})"


def read_state(
    database: Database,
    queue: PrioritySyncQueue,
    *,
    runs_limit: int = 20,
    transitions: list[tuple[float, str]] | None = None,
    status: str | None = None,
) -> DashboardState:
    """One look at the file (see the module docstring).

    Args:
        database: the store's file.
        queue: its queue (for the counts and dead letters).
        runs_limit: how many recent runs to list.
        transitions: status changes seen so far (kept by the caller).
        status: the live status when a service runs in this process (else read from the
            file: running work, the last run, scheduled work).
    """
    with database.reading() as conn:
        tables = _tables(conn)
        stats = queue.stats()
        dead_ops = queue.dead()
        acked = (
            {str(key): int(done) for key, done in conn.execute(_ACKED)}
            if "nx_transfers" in tables
            else {}
        )
        quarantined: list[QuarantinedChange] = (
            Quarantine.list(conn) if Quarantine.exists(conn) else []
        )
        worker = _lease(conn) if "nx_worker_lease" in tables else None
    work: list[WorkInfo] = []
    runs: list[TaskRun] = []
    if "nx_work" in tables:
        store = WorkStore(database)
        work = [WorkInfo.from_spec(spec) for spec in store.find(WorkQuery())]
        runs = [_run_to_task_run(r) for r in store.runs(limit=runs_limit)]
    jobs: list[JobInfo] = []
    if "nx_job" in tables:
        states = job_states(work)
        for row in JobTable(database).rows():
            state, next_at = states.get(row.job_id, ("idle", None))
            last = next((run for run in runs if run.task_id == row.job_id), None)
            jobs.append(row.info(state=state, next_run_at=next_at, last_run=last))
    counts = {
        priority.name: {state.value: stats.counts[priority][state] for state in OpState}
        for priority in SyncPriority
    }
    return DashboardState(
        at=time.time(),
        path=str(database.path),
        status=status or _status(work, runs),
        transitions=list(transitions or []),
        queue=QueueView(
            counts=counts,
            pending=stats.pending,
            leased=stats.leased,
            dead=stats.dead,
            backing_off=stats.backing_off,
            oldest_pending_age=stats.oldest_pending_age,
        ),
        transfers=read_transfers(queue, acked) if "nx_transfers" in tables else [],
        runs=runs,
        dead=[
            DeadLetter(
                op_id=op.op_id,
                collection=op.collection,
                item_id=str(op.item_id),
                kind=op.kind.value,
                priority=op.priority.name,
                attempts=op.attempts,
                reason=op.last_error or "",
                updated_at=op.updated_at,
            )
            for op in dead_ops
        ],
        quarantined=[
            Quarantined(
                id=q.id,
                collection=q.change.collection,
                item_id=str(q.change.item_id),
                reason=q.reason,
                attempts=q.attempts,
                created_at=q.created_at,
            )
            for q in quarantined
        ],
        jobs=jobs,
        worker=worker,
    )


def state_json(state: DashboardState) -> str:
    """The state as the JSON the page reads."""
    return state.model_dump_json()


def as_dict(state: DashboardState) -> dict[str, Any]:
    """The state as plain data."""
    loaded: dict[str, Any] = json.loads(state_json(state))
    return loaded
