"""One run of one piece of work: its runner, the context its task sees, the driver's hooks.

A :class:`_Runner` holds a run's cancel scope and stop reason; the task receives a
:class:`_RunContext` (attempt count, input, ``is_stopped``, ``set_progress``). A test driver
(:class:`ReleaseControl`) may release work early through the :class:`DriverHooks` the
manager gives it (WM-23).
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._task import BackgroundSyncTask, TaskResult
from ._decisions import ReleaseFlags, WorkSpec
from ._records import WorkInfo
from ._requests import check_data_size
from ._states import StopReason

if TYPE_CHECKING:
    from ._dispatch import _Dispatching

logger = logging.getLogger("nexus_store.sync.workmanager")

__all__ = ["DriverHooks", "ManagerState", "ReleaseControl", "StoppableTask"]


class ManagerState(StrEnum):
    """The lifecycle of a :class:`~._workmanager.WorkManager`."""

    UNSTARTED = "unstarted"
    RUNNING = "running"
    CLOSED = "closed"


@runtime_checkable
class StoppableTask(Protocol):
    """A task that wants to hear when it is stopped (androidx ``onStopped``), optional."""

    def on_stopped(self) -> None:
        """Called once when the scheduler stops the run (before it is cancelled)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class DriverHooks:
    """What a :class:`ReleaseControl` (the test driver) may ask of the manager."""

    lookup: Callable[[str], WorkInfo | None]
    """The current snapshot of a work id, or ``None`` if unknown."""
    wake: Callable[[], None]
    """Make the dispatcher look again (after a flag changed)."""
    settle: Callable[[], Awaitable[None]]
    """Wait for one full dispatcher pass."""


class ReleaseControl(Protocol):
    """Overrides of when work is released, for tests (WM-23; see ``nexus_store.testing``)."""

    @property
    def manual_time(self) -> bool:
        """True: delays are released by the driver; False: by the clock (virtual-clock mode)."""
        ...

    def flags(self) -> Mapping[str, ReleaseFlags]:
        """The current overrides by work id."""
        ...

    def work_started(self, work_id: str) -> None:
        """A run started: its overrides are used up."""
        ...

    def bind(self, hooks: DriverHooks) -> None:
        """Called once by the manager that uses this control."""
        ...


@dataclasses.dataclass(eq=False)
class _Runner:
    spec: WorkSpec
    task: BackgroundSyncTask
    run_id: int
    expedited_slot: bool
    started: float
    """``clock.monotonic()`` at the start (for the duration)."""
    started_at: float
    """``clock.now()`` at the start (for the time limit)."""
    constraints_overridden: bool
    scope: anyio.CancelScope = dataclasses.field(default_factory=anyio.CancelScope)
    stop_reason: StopReason | None = None
    finished: bool = False

    def stop(self, reason: StopReason) -> None:
        """Signal the worker (is_stopped, on_stopped) and cancel it; its result is ignored."""
        if self.finished or self.stop_reason is not None:
            return
        self.stop_reason = reason
        logger.info(
            "stopping work %s (%s): %s", self.spec.id, self.spec.request.worker_name, reason.name
        )
        if isinstance(self.task, StoppableTask):
            try:
                self.task.on_stopped()
            except Exception:
                logger.exception("on_stopped() of %s raised", self.spec.request.worker_name)
        self.scope.cancel()


class _RunContext:
    """The :class:`~nexus_store.sync.TaskContext` a worker receives."""

    def __init__(self, manager: _Dispatching, runner: _Runner) -> None:
        self._manager = manager
        self._runner = runner
        spec = runner.spec
        self.work_id = spec.id
        """The id of the work being run."""
        self.tags = spec.request.tags
        """The work's tags."""
        self.generation = spec.generation
        """The spec generation this run started with (WM-17)."""
        # The stored count was incremented on start; the worker sees the value before (WM-5).
        self._attempt = spec.run_attempt_count - 1
        self._input = types.MappingProxyType(dict(spec.request.input))

    @property
    def run_attempt_count(self) -> int:
        """How many times this work ran before (0 on the first execution)."""
        return self._attempt

    @property
    def input(self) -> Mapping[str, Any]:
        """The work's input data (read-only)."""
        return self._input

    @property
    def is_stopped(self) -> bool:
        """True once the scheduler stopped this run (constraint lost, timeout, cancel)."""
        return self._runner.stop_reason is not None

    @property
    def stop_reason(self) -> StopReason:
        """Why the run was stopped (``NOT_STOPPED`` while it was not)."""
        return self._runner.stop_reason or StopReason.NOT_STOPPED

    async def set_progress(self, progress: Mapping[str, Any]) -> None:
        """Publish progress (visible in WorkInfo while RUNNING).

        Ignored once the run finished or was stopped (WM-20).

        Raises:
            WorkDataTooLargeError: above 10 KB encoded.
        """
        if self._runner.finished or self._runner.stop_reason is not None:
            return
        blob = check_data_size(progress, "progress")
        self._manager._store_progress(self._runner, blob)
        await anyio.lowlevel.checkpoint()


def _as_result(value: object) -> TaskResult:
    if isinstance(value, TaskResult):
        return value
    if isinstance(value, bool):
        return TaskResult.success() if value else TaskResult.failure()
    raise TypeError(f"execute() must return a bool or a TaskResult, not {type(value).__name__}")
