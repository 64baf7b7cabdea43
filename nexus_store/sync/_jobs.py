"""Jobs people can see and steer: definitions, their switches in the file, and what they show.

A :class:`JobDefinition` is an app's background job as a person names it: an id, a name,
a description, a schedule (:class:`PeriodicSchedule` with interval and flex, or
:class:`OneTimeSchedule` with a delay), constraints (:class:`JobConstraints`: network
type, battery not low, charging, idle, storage not low) and a callback returning a
:class:`~nexus_store.sync.TaskResult` (``success(message=...)``, ``failure(error=...)``,
``retry()``) or a bool. The store's own sync is a job too (:data:`SYNC_JOB`).

The switches live in the store's file, table ``nx_job`` (one row a job: its definition as
JSON, ``enabled``, ``run_requested_at`` and a control sequence), so that:

- ``enable``/``disable`` survive restarts (a disabled job is not scheduled when the
  service starts);
- another process (``nexus-store jobs enable|disable|run``, the dashboard) can steer a
  running service: it writes the row and bumps the control sequence; the service looks at
  the sequence on every pass of its trigger loop (woken by that very commit) and applies
  what changed (:class:`JobTable`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._database import Database
from .._exceptions import UnknownWorkError
from ._task import TaskContext, TaskResult, TaskRun
from .device._device import DeviceState, NetworkType

__all__ = [
    "SYNC_JOB",
    "JobConstraints",
    "JobDefinition",
    "JobInfo",
    "JobTable",
    "OneTimeSchedule",
    "PeriodicSchedule",
    "RunNowResult",
    "unmet_job_constraints",
]

SYNC_JOB = "nexus-store.sync"
"""The id of the store's own sync as a job (the same as its task id)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_job (
        job_id TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        run_requested_at REAL,
        control_seq INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    )""",
)


class JobConstraints(BaseModel):
    """What must hold on the device for a job to run (the WorkManager constraints, WM-13)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network_type: NetworkType = NetworkType.NOT_REQUIRED
    battery_not_low: bool = False
    charging: bool = False
    idle: bool = False
    storage_not_low: bool = False

    def words(self) -> list[str]:
        """The constraints that are set, in words (empty: none)."""
        words = []
        if self.network_type is not NetworkType.NOT_REQUIRED:
            words.append(f"network {self.network_type.value}")
        words += [
            name
            for name, on in (
                ("battery not low", self.battery_not_low),
                ("charging", self.charging),
                ("idle", self.idle),
                ("storage not low", self.storage_not_low),
            )
            if on
        ]
        return words


def unmet_job_constraints(constraints: JobConstraints, state: DeviceState | None) -> list[str]:
    """Every constraint ``state`` does not meet, in words (``None``: the device is unknown)."""
    if state is None:
        return ["the device state cannot be read"] if constraints.words() else []
    unmet = []
    if not state.satisfies_network(constraints.network_type):
        unmet.append(f"network: requires {constraints.network_type.value}")
    if constraints.battery_not_low and state.battery_low:
        unmet.append("battery: the battery is low")
    if constraints.charging and not state.charging:
        unmet.append("charging: the device is not charging")
    if constraints.idle and not state.idle:
        unmet.append("idle: the device is in use")
    if constraints.storage_not_low and state.storage_low:
        unmet.append("storage: free storage is low")
    return unmet


class PeriodicSchedule(BaseModel):
    """Run every ``interval`` (clamped to the periodic floor, WM-1), within the last
    ``flex`` of each interval (``None``: anywhere in it, WM-2), the first run after
    ``initial_delay``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["periodic"] = "periodic"
    interval: timedelta
    flex: timedelta | None = None
    initial_delay: timedelta = timedelta(0)


class OneTimeSchedule(BaseModel):
    """Run once, ``delay`` after the service starts (again at each start while unfinished)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["one_time"] = "one_time"
    delay: timedelta = timedelta(0)


JobCallback = Callable[[TaskContext], Awaitable[bool | TaskResult]]


@dataclasses.dataclass(frozen=True)
class JobDefinition:
    """An app's background job, as people see and steer it.

    Args:
        id: a stable id (names the job in the schedule, the history and the command line).
        name: a short name for people.
        description: what the job does.
        schedule: :class:`PeriodicSchedule` or :class:`OneTimeSchedule`.
        constraints: what must hold for it to run.
        callback: ``async def callback(context) -> TaskResult | bool``; an exception is a
            failure (WM-10).
    """

    id: str
    name: str
    callback: JobCallback
    schedule: PeriodicSchedule | OneTimeSchedule = dataclasses.field(
        default_factory=OneTimeSchedule
    )
    constraints: JobConstraints = dataclasses.field(default_factory=JobConstraints)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("a job needs a non-empty string id")
        if not callable(self.callback):
            raise TypeError("a job's callback must be an async callable")

    @property
    def task_id(self) -> str:
        """The job's id (a :class:`~nexus_store.sync.BackgroundSyncTask` names itself so)."""
        return self.id

    async def execute(self, context: TaskContext) -> bool | TaskResult:
        """Run the callback once."""
        return await self.callback(context)

    def described(self) -> dict[str, Any]:
        """What the file keeps of the definition (everything but the callback)."""
        return {
            "name": self.name,
            "description": self.description,
            "schedule": self.schedule.model_dump(mode="json"),
            "constraints": self.constraints.model_dump(mode="json"),
        }


class JobInfo(BaseModel):
    """A job as the command line and the dashboard show it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    description: str = ""
    schedule: PeriodicSchedule | OneTimeSchedule | None = Field(default=None, discriminator="kind")
    constraints: JobConstraints = JobConstraints()
    enabled: bool = True
    state: str = "unknown"
    """The scheduler's state of its work (``enqueued``, ``running``, ``cancelled``...)."""
    next_run_at: float | None = None
    run_requested: bool = False
    """A run was asked for (``run_now``) and has not started yet."""
    last_run: TaskRun | None = None


class RunNowResult(BaseModel):
    """The answer to ``run_now``: asked for, and what it still waits for."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    accepted: bool
    unmet: list[str] = Field(default_factory=list)
    """Constraints not met now: the run starts when they are."""
    message: str = ""


@dataclasses.dataclass(frozen=True)
class JobRow:
    """One row of ``nx_job``."""

    job_id: str
    definition: dict[str, Any]
    enabled: bool
    run_requested_at: float | None
    control_seq: int
    updated_at: float

    def info(self, **fields: Any) -> JobInfo:
        """The row as a :class:`JobInfo` (with the scheduler's ``fields`` added)."""
        d = self.definition
        return JobInfo(
            id=self.job_id,
            name=str(d.get("name") or self.job_id),
            description=str(d.get("description") or ""),
            schedule=d.get("schedule"),
            constraints=JobConstraints.model_validate(d.get("constraints") or {}),
            enabled=self.enabled,
            run_requested=self.run_requested_at is not None,
            **fields,
        )


class JobTable:
    """The ``nx_job`` table of one file: definitions and the switches of each job.

    Every method runs on the caller's thread (call it from a worker thread in async code).
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        with database.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def upsert(self, job_id: str, definition: dict[str, Any], *, now: float) -> None:
        """Record (or update) a job's definition; its switches are kept."""
        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO nx_job (job_id, definition, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET definition = excluded.definition",
                (job_id, json.dumps(definition, sort_keys=True), now),
            )

    def _control(self, job_id: str, assignment: str, params: tuple[Any, ...], now: float) -> None:
        with self.database.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE nx_job SET {assignment}, updated_at = ?,"
                " control_seq = (SELECT coalesce(max(control_seq), 0) + 1 FROM nx_job)"
                " WHERE job_id = ?",
                (*params, now, job_id),
            )
            if cursor.rowcount != 1:
                known = ", ".join(self.ids()) or "none yet"
                raise UnknownWorkError(
                    f"no job {job_id!r} in this file (known: {known}); a job is known once "
                    "the app's background service registered it"
                )

    def set_enabled(self, job_id: str, enabled: bool, *, now: float) -> None:
        """Switch a job on or off (kept across restarts).

        Raises:
            UnknownWorkError: no such job in the file.
        """
        self._control(job_id, "enabled = ?", (int(enabled),), now)

    def request_run(self, job_id: str, *, now: float) -> None:
        """Ask the service that runs the job for a run now.

        Raises:
            UnknownWorkError: no such job in the file.
        """
        self._control(job_id, "run_requested_at = ?", (now,), now)

    def clear_run_request(self, job_id: str) -> None:
        """The run asked for was handed to the scheduler."""
        with self.database.transaction() as conn:
            conn.execute("UPDATE nx_job SET run_requested_at = NULL WHERE job_id = ?", (job_id,))

    def control_seq(self) -> int:
        """The latest control sequence (grows with every switch from any process)."""
        rows = self.database.execute("SELECT coalesce(max(control_seq), 0) FROM nx_job")
        return int(rows[0][0])

    def rows(self) -> list[JobRow]:
        """Every job, by id."""
        return [
            JobRow(
                job_id=row[0],
                definition=json.loads(row[1]),
                enabled=bool(row[2]),
                run_requested_at=row[3],
                control_seq=int(row[4]),
                updated_at=float(row[5]),
            )
            for row in self.database.execute(
                "SELECT job_id, definition, enabled, run_requested_at, control_seq, updated_at"
                " FROM nx_job ORDER BY job_id"
            )
        ]

    def row(self, job_id: str) -> JobRow | None:
        """One job's row, if the file knows the job."""
        return next((row for row in self.rows() if row.job_id == job_id), None)

    def ids(self) -> list[str]:
        """The ids of every job the file knows."""
        return [str(row[0]) for row in self.database.execute("SELECT job_id FROM nx_job")]

    def enabled(self, job_id: str) -> bool:
        """Whether the job is switched on (a job the file does not know yet is)."""
        rows = self.database.execute("SELECT enabled FROM nx_job WHERE job_id = ?", (job_id,))
        return bool(rows[0][0]) if rows else True


def table_exists(database: Database) -> bool:
    """Whether the file has an ``nx_job`` table (read-only look, for the command line)."""
    rows = database.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_job'")
    return bool(rows)
