"""What a scheduler runs: a background task, the result it reports, its run history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ._jobs import JobDefinition

__all__ = [
    "BackgroundSyncTask",
    "RegisteredTask",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
    "TaskRun",
]


class TaskOutcome(StrEnum):
    """How a run ended, as a worker reports it (androidx ``ListenableWorker.Result``)."""

    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"


class TaskResult(BaseModel):
    """A task's result: an outcome, optional output data and a message."""

    model_config = ConfigDict(frozen=True)

    outcome: TaskOutcome
    output: dict[str, Any] = Field(default_factory=dict)
    message: str = ""

    @classmethod
    def success(cls, output: Mapping[str, Any] | None = None, message: str = "") -> TaskResult:
        """The task finished its work; ``message`` is kept in the run history."""
        return cls(outcome=TaskOutcome.SUCCESS, output=dict(output or {}), message=message)

    @classmethod
    def failure(
        cls, output: Mapping[str, Any] | None = None, message: str = "", *, error: str = ""
    ) -> TaskResult:
        """The task failed and should not be retried; ``error`` (or ``message``) says why
        and is kept in the run history."""
        return cls(outcome=TaskOutcome.FAILURE, output=dict(output or {}), message=error or message)

    @classmethod
    def retry(cls, message: str = "") -> TaskResult:
        """The task failed transiently; run it again after backoff."""
        return cls(outcome=TaskOutcome.RETRY, message=message)


class TaskContext(Protocol):
    """What a running task can see and do (provided by the scheduler)."""

    @property
    def run_attempt_count(self) -> int:
        """How many times this work ran before (0 on the first execution, WM-5)."""
        ...

    @property
    def input(self) -> Mapping[str, Any]:
        """The work's input data."""
        ...

    @property
    def is_stopped(self) -> bool:
        """True once the scheduler asked the task to stop (constraint lost, timeout, cancel)."""
        ...

    async def set_progress(self, progress: Mapping[str, Any]) -> None:
        """Publish progress while running (ignored after the task finished, WM-20)."""
        ...


@runtime_checkable
class BackgroundSyncTask(Protocol):
    """A unit of background work: the store's sync, or an app's own job.

    ``execute`` returns ``True``/``False`` (success/failure) or a :class:`TaskResult`
    (which can ask for a retry). An exception counts as failure (WM-10). The task is
    cancelled (anyio cancellation) when the scheduler stops it.
    """

    @property
    def task_id(self) -> str:
        """A stable name for the task (used in events, run history and as a tag)."""
        ...

    async def execute(self, context: TaskContext) -> bool | TaskResult:
        """Do the work once."""
        ...


class TaskRun(BaseModel):
    """One run from the persisted run history, whatever the adapter."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    """The task (``nexus-store.sync`` for the store's sync)."""
    source: str
    """What the scheduler ran: a work id (WorkManager-like) or a task identifier (BGTask-like)."""
    started_at: float
    ended_at: float | None = None
    duration: float | None = None
    success: bool | None = None
    """``None`` while running, or for a run the process did not live to finish."""
    outcome: str
    """``success``, ``failure``, ``retry``, ``stopped``, ``cancelled``, ``interrupted`` or
    ``running``."""
    message: str = ""
    """The result's message (a success's too), the error, or why the run was stopped."""
    attempt: int | None = None
    """The attempt count the task saw (0 on the first execution), where the adapter keeps it."""
    stop_reason: str | None = None
    """Why the scheduler stopped the run (``TIMEOUT``, ``CONSTRAINT_CONNECTIVITY``...)."""


@dataclass(frozen=True)
class RegisteredTask:
    """An app job registered with :meth:`~nexus_store.sync.BackgroundSyncService.register_task`."""

    task: BackgroundSyncTask
    interval: timedelta | None
    """Periodic when set; one run per service start otherwise."""
    initial_delay: timedelta
    constrained: bool
    """Whether the config's constraints apply to it."""
    definition: JobDefinition | None = None
    """The job's definition, when it was registered as one (its own schedule and
    constraints then apply instead of the config's)."""

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id
