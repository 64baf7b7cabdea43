"""The store's sync as a task of the background service, and app tasks that report on it.

:class:`StoreSyncTask` is what every adapter schedules under the id :data:`SYNC_TASK_ID`:
one sync run through the service (so runs never overlap and the service's status and
streams follow them). App tasks registered with
:meth:`~nexus_store.sync.BackgroundSyncService.register_task` run wrapped, so their
results appear on the service's ``events`` stream too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._decisions import run_budget, sync_outcome
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult
from .engine._progress import SyncEvent

if TYPE_CHECKING:
    from ._service import BackgroundSyncService

__all__ = ["SYNC_TASK_ID", "StoreSyncTask"]

SYNC_TASK_ID = "nexus-store.sync"
"""The task id (worker name, tag) of the store's sync."""


class StoreSyncTask:
    """The store's sync as a :class:`~nexus_store.sync.BackgroundSyncTask`.

    Each execution is one sync run of the service's stores (one at a time: a second
    execution waits for the first), within :func:`run_budget` of the config's execution
    time limit. The result follows :func:`sync_outcome`.
    """

    task_id = SYNC_TASK_ID

    def __init__(self, service: BackgroundSyncService) -> None:
        self._service = service

    async def execute(self, context: TaskContext) -> TaskResult:
        """Run the sync once."""
        budget = run_budget(self._service.config.execution_time_limit)
        summary = await self._service._run_sync(budget=budget, trigger="scheduled")
        return sync_outcome(summary)

    def __repr__(self) -> str:
        return f"StoreSyncTask({self.task_id!r})"


class _ReportingTask:
    """Wraps an app task so each run also publishes a :class:`SyncEvent`."""

    def __init__(self, inner: BackgroundSyncTask, service: BackgroundSyncService) -> None:
        self._inner = inner
        self._service = service

    @property
    def task_id(self) -> str:
        return self._inner.task_id

    async def execute(self, context: TaskContext) -> bool | TaskResult:
        clock = self._service.clock
        started = clock.monotonic()
        try:
            result = await self._inner.execute(context)
        except Exception as exc:
            self._report(False, f"raised {type(exc).__name__}: {exc}", started)
            raise
        if isinstance(result, TaskResult):
            success = result.outcome is TaskOutcome.SUCCESS
            message = result.message or result.outcome.value
        else:
            success = bool(result)
            message = "success" if success else "failure"
        self._report(success, message, started)
        return result

    def on_stopped(self) -> None:
        stopped = getattr(self._inner, "on_stopped", None)
        if callable(stopped):
            stopped()

    def _report(self, success: bool, message: str, started: float) -> None:
        clock = self._service.clock
        self._service._streams.events.publish(
            SyncEvent(
                task_id=self.task_id,
                run_id=uuid.uuid4().hex,
                success=success,
                message=message,
                timestamp=datetime.fromtimestamp(clock.now(), UTC),
                duration=max(0.0, clock.monotonic() - started),
            )
        )
