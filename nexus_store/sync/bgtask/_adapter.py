"""The BGTask-like adapter: the background sync service on :class:`~._bgtask.BGTaskScheduler`.

iOS-style scheduling (statements BG-1…BG-14), with these identifiers declared
up front (BG-1):

- ``nexus-store.sync.refresh``: an app-refresh request for the periodic sync. Requests are
  one-shot (BG-6), so each launch first resubmits the next one with
  ``earliest_begin = now + min_interval`` (while the schedule is on); there is no automatic
  retry (BG-8): a failed run waits for that next launch. A ``CRITICAL`` save resubmits it
  with ``earliest_begin = now``, a ``HIGH`` save with ``now + high_priority_debounce``
  (never later than it already was, BG-4 replaces the pending request). ``earliest_begin``
  is only a lower bound (BG-5): the launch policy decides (BG-14).
- ``nexus-store.sync.processing``: a processing request for a large backlog (at least
  ``backlog_threshold`` live ops when the sync is scheduled, or a run that ran out of
  budget). It needs a network if the config does, external power if the config requires
  charging, and runs only while the device is idle (BG-9).
- the task id of every app job from :meth:`~BackgroundSyncService.register_task`, as
  processing requests resubmitted by their handler when they have an interval.

Each launch runs within its time budget (BG-7): the sync run's own budget ends shortly
before the expiration handler would fire, and the expiration handler (a simulated one
too, BG-13) cancels the run, which gives its leased ops back to the queue untouched; the
launch is then completed unsuccessfully (BG-8). App-refresh requests have no constraints
(BG-2): the config's charging, battery, storage and idle requirements are checked when a
launch starts, and a launch that finds one unmet completes unsuccessfully without
running (the network is the run's business: offline, nothing is sent).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..._clock import Clock
from ..._exceptions import (
    LifecycleError,
    SyncError,
    TooManyPendingTaskRequestsError,
    UnavailableError,
)
from ..._priority import SyncPriority
from ..._remote import RemoteBackend
from ...queue import PrioritySyncQueue
from .._changes import ChangeSource
from .._config import BackgroundSyncConfig, ScheduleResult, ServiceState, unmet_constraints
from .._decisions import format_time, sync_outcome
from .._service import BackgroundSyncService
from .._store_task import SYNC_TASK_ID
from .._task import RegisteredTask, TaskOutcome, TaskRun
from ..device._device import DeviceStateProvider
from ..engine._progress import SyncStopReason
from ..engine._target import SyncTarget
from ._bgtask import BGTaskScheduler
from ._handle import BGTaskHandle, BGTaskHandler, LaunchRecord, handler_for_task
from ._launch import LaunchPolicy
from ._requests import (
    DEFAULT_EXPIRATION_LEAD,
    DEFAULT_PROCESSING_BUDGET,
    DEFAULT_REFRESH_BUDGET,
    AppRefreshRequest,
    BGTaskRequest,
    ProcessingRequest,
)

__all__ = [
    "PROCESSING_IDENTIFIER",
    "REFRESH_IDENTIFIER",
    "BGTaskSyncService",
    "launch_budget",
]

REFRESH_IDENTIFIER = SYNC_TASK_ID + ".refresh"
"""The app-refresh task identifier of the periodic sync."""
PROCESSING_IDENTIFIER = SYNC_TASK_ID + ".processing"
"""The processing task identifier of backlog runs."""

_SYNC_IDENTIFIERS = (REFRESH_IDENTIFIER, PROCESSING_IDENTIFIER)

logger = logging.getLogger("nexus_store.sync.service")


def launch_budget(budget: float | None, lead: float) -> float | None:
    """The sync run's budget within a launch: 90 % of the time before expiration begins.

    Args:
        budget: the launch's budget (``None``: unbounded).
        lead: how long before the end of the budget expiration begins.
    """
    if budget is None:
        return None
    before_expiry = budget - min(lead, budget / 2)
    return max(before_expiry * 0.9, 0.001)


def _record_to_task_run(record: LaunchRecord) -> TaskRun:
    if record.success is None:
        outcome = "running"
    elif record.message.startswith("interrupted"):
        outcome = "interrupted"  # the process ended during the launch (found at restart)
    else:
        outcome = "success" if record.success else "failure"
    task_id = SYNC_TASK_ID if record.identifier in _SYNC_IDENTIFIERS else record.identifier
    return TaskRun(
        task_id=task_id,
        source=f"{record.identifier} ({record.kind.value})",
        started_at=record.started_at,
        ended_at=record.ended_at,
        duration=record.duration,
        success=record.success,
        outcome=outcome,
        message=record.message,
    )


class BGTaskSyncService(BackgroundSyncService):
    """The BGTask-like background sync service (iOS).

    Args:
        targets: the store (or stores) to sync.
        backend: where ops go; default the store's ``backend``.
        config: the configuration.
        clock: the time source (``FakeClock`` in tests).
        device: the device state (idle, power, background refresh switch...).
        change_source: what wakes the service after commits (default: the store's change log).
        watch_commits: ``False`` to not react to commits by themselves.
        lease_for: seconds a pushed batch stays reserved.
        launch_policy: when pending requests launch (default: iOS-like opportunistic;
            ``DeterministicLaunchPolicy()`` launches at ``earliest_begin``).
        refresh_budget: seconds an app-refresh launch may run (iOS: up to 30).
        processing_budget: seconds a processing launch may run.
        expiration_lead: the expiration handler fires this long before a budget ends.
        backlog_threshold: live ops from which a processing request is submitted.
        device_poll_interval: seconds between device reads for providers without
            change notifications.
    """

    adapter_name = "bgtask"
    max_tasks = 9
    """App jobs use processing requests: nine besides the backlog's (BG-3)."""

    def __init__(
        self,
        targets: SyncTarget | Sequence[SyncTarget],
        backend: RemoteBackend | None = None,
        *,
        config: BackgroundSyncConfig | None = None,
        clock: Clock | None = None,
        device: DeviceStateProvider | None = None,
        change_source: ChangeSource | None = None,
        watch_commits: bool = True,
        lease_for: float = 120.0,
        launch_policy: LaunchPolicy | None = None,
        refresh_budget: float = DEFAULT_REFRESH_BUDGET,
        processing_budget: float = DEFAULT_PROCESSING_BUDGET,
        expiration_lead: float = DEFAULT_EXPIRATION_LEAD,
        backlog_threshold: int = 1000,
        device_poll_interval: float = 60.0,
    ) -> None:
        super().__init__(
            targets,
            backend,
            config=config,
            clock=clock,
            device=device,
            change_source=change_source,
            watch_commits=watch_commits,
            lease_for=lease_for,
        )
        if backlog_threshold < 1:
            raise ValueError("backlog_threshold must be at least 1")
        self._launch_policy = launch_policy
        self._refresh_budget = refresh_budget
        self._processing_budget = processing_budget
        self._lead = expiration_lead
        self._backlog_threshold = backlog_threshold
        self._device_poll_interval = device_poll_interval
        self._scheduler: BGTaskScheduler | None = None

    @property
    def is_supported(self) -> bool:
        """True: background launches exist (they may still be refused: background refresh
        off gives ``REJECTED_OS_POLICY``)."""
        return True

    @property
    def scheduler(self) -> BGTaskScheduler:
        """The BGTaskScheduler (pending requests, history, force quit...).

        Raises:
            LifecycleError: the service is not running.
        """
        if self._scheduler is None:
            raise LifecycleError("the service is not started: use `async with service:`")
        return self._scheduler

    # -- debugging (BG-13) --------------------------------------------------------------------

    def simulate_launch(self, identifier: str = REFRESH_IDENTIFIER) -> BGTaskHandle:
        """Launch the pending request for ``identifier`` now (debug API, BG-13)."""
        self._check_running()
        return self.scheduler.simulate_launch(identifier)

    def simulate_expiration(self, identifier: str = REFRESH_IDENTIFIER) -> None:
        """Fire the expiration of the running launch of ``identifier`` (debug API, BG-13)."""
        self._check_running()
        self.scheduler.simulate_expiration(identifier)

    # -- adapter hooks ------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack) -> None:
        handlers: dict[str, BGTaskHandler] = {
            REFRESH_IDENTIFIER: self._refresh_handler,
            PROCESSING_IDENTIFIER: self._processing_handler,
        }
        for registered in self._tasks.values():
            handlers[registered.task_id] = self._task_handler(registered)
        scheduler = BGTaskScheduler(
            self._database,
            handlers.keys(),
            handlers=handlers,
            clock=self._clock,
            device=self._device,
            policy=self._launch_policy,
            refresh_budget=self._refresh_budget,
            processing_budget=self._processing_budget,
            expiration_lead=self._lead,
            device_poll_interval=self._device_poll_interval,
        )
        await stack.enter_async_context(scheduler)
        self._scheduler = scheduler
        stack.callback(scheduler.subscribe(self._on_launch))
        now = self._clock.now()
        for registered in self._tasks.values():
            if self._pending(registered.task_id) is None:
                self._submit_task(registered, now + registered.initial_delay.total_seconds())

    def _pending(self, identifier: str) -> BGTaskRequest | None:
        for request in self.scheduler.pending_requests():
            if request.identifier == identifier:
                return request
        return None

    def _on_launch(self, record: LaunchRecord) -> None:
        self._scheduler_changed(self._sync_pending())

    def _sync_pending(self) -> bool:
        return any(self._pending(identifier) for identifier in _SYNC_IDENTIFIERS)

    # -- submitting ---------------------------------------------------------------------------

    def _submit_task(self, registered: RegisteredTask, earliest: float) -> None:
        config = self.config
        request = ProcessingRequest(
            registered.task_id,
            earliest_begin=earliest,
            requires_network=registered.constrained and config.requires_network,
            requires_external_power=registered.constrained and config.requires_charging,
        )
        try:
            self.scheduler.submit(request)
        except (UnavailableError, TooManyPendingTaskRequestsError) as exc:
            self._log_refusal(registered.task_id, exc)

    def _submit_refresh(self, earliest: float) -> ScheduleResult:
        try:
            self.scheduler.submit(AppRefreshRequest(REFRESH_IDENTIFIER, earliest_begin=earliest))
        except (UnavailableError, TooManyPendingTaskRequestsError) as exc:
            self._log_refusal(REFRESH_IDENTIFIER, exc)
            return ScheduleResult.REJECTED_OS_POLICY
        return ScheduleResult.ACCEPTED

    def _submit_processing(self) -> None:
        if self._pending(PROCESSING_IDENTIFIER) is not None:
            return
        config = self.config
        request = ProcessingRequest(
            PROCESSING_IDENTIFIER,
            requires_network=config.requires_network,
            requires_external_power=config.requires_charging,
        )
        try:
            self.scheduler.submit(request)
        except (UnavailableError, TooManyPendingTaskRequestsError) as exc:
            self._log_refusal(PROCESSING_IDENTIFIER, exc)

    @staticmethod
    def _log_refusal(identifier: str, exc: Exception) -> None:
        logger.warning("submitting %s was refused: %s: %s", identifier, type(exc).__name__, exc)

    async def _check_backlog(self) -> None:
        queues: dict[int, PrioritySyncQueue] = {id(t.queue): t.queue for t in self._targets}

        def live() -> int:
            return sum(queue.stats().live for queue in queues.values())

        if await anyio.to_thread.run_sync(live) >= self._backlog_threshold:
            self._submit_processing()

    # -- handlers -----------------------------------------------------------------------------

    async def _refresh_handler(self, handle: BGTaskHandle) -> None:
        if self._periodic and self._state is ServiceState.RUNNING:
            # One-shot requests (BG-6): the next periodic launch is asked for first.
            self._submit_refresh(self._clock.now() + self.config.effective_interval.total_seconds())
        await self._sync_launch(handle)

    async def _processing_handler(self, handle: BGTaskHandle) -> None:
        await self._sync_launch(handle)

    async def _sync_launch(self, handle: BGTaskHandle) -> None:
        unmet = [
            reason
            for reason in unmet_constraints(self.config, self._device.current())
            if not reason.startswith("network")
        ]
        if unmet:
            handle.set_task_completed(False, message="constraints unmet: " + "; ".join(unmet))
            return
        scope = anyio.CancelScope()
        handle.expiration_handler = scope.cancel
        budget = launch_budget(handle.budget, self._lead)
        summary = None
        try:
            with scope:
                summary = await self._run_sync(budget=budget, trigger=handle.kind.value)
        except SyncError as exc:
            handle.set_task_completed(False, message=f"{type(exc).__name__}: {exc}")
            return
        if summary is None:
            handle.set_task_completed(
                False,
                message="expired: the sync run was stopped; its leased ops went back to the queue",
            )
            return
        result = sync_outcome(summary)
        handle.set_task_completed(result.outcome is TaskOutcome.SUCCESS, message=summary.message())
        if summary.stop_reason is SyncStopReason.BUDGET:
            self._submit_processing()  # more than one launch can send: ask for a long one

    def _task_handler(self, registered: RegisteredTask) -> BGTaskHandler:
        inner = handler_for_task(registered.task)

        async def run(handle: BGTaskHandle) -> None:
            if registered.interval is not None:
                self._submit_task(
                    registered, self._clock.now() + registered.interval.total_seconds()
                )
            await inner(handle)

        return run

    # -- the service hooks --------------------------------------------------------------------

    async def _schedule(self) -> ScheduleResult:
        now = self._clock.now()
        next_at = now + self.config.effective_interval.total_seconds()
        pending = self._pending(REFRESH_IDENTIFIER)
        # A pending request (kept from before a restart, or asked for by a save) keeps
        # its time unless that is later than one interval from now.
        if pending is None or (pending.earliest_begin or now) > next_at:
            result = self._submit_refresh(next_at)
            if result is not ScheduleResult.ACCEPTED:
                return result
        await self._check_backlog()
        return ScheduleResult.ACCEPTED

    async def _request_run(self, priority: SyncPriority) -> ScheduleResult:
        await anyio.lowlevel.checkpoint()
        scheduler = self.scheduler
        if scheduler.running_task(REFRESH_IDENTIFIER) is not None:
            return ScheduleResult.ACCEPTED  # its end makes the service look again
        now = self._clock.now()
        target = now
        if priority is not SyncPriority.CRITICAL:
            target += self.config.high_priority_debounce.total_seconds()
        pending = self._pending(REFRESH_IDENTIFIER)
        if pending is not None and (pending.earliest_begin or now) <= target:
            return ScheduleResult.ACCEPTED
        return self._submit_refresh(target)

    async def _cancel(self) -> None:
        await anyio.lowlevel.checkpoint()
        for identifier in _SYNC_IDENTIFIERS:
            self.scheduler.cancel(identifier)

    async def _has_schedule(self) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._sync_pending()

    async def _waits(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        scheduler = self.scheduler
        now = self._clock.now()
        waits: list[str] = []
        for identifier, label in (
            (REFRESH_IDENTIFIER, "app-refresh launch"),
            (PROCESSING_IDENTIFIER, "processing launch (backlog)"),
        ):
            pending = self._pending(identifier)
            if pending is None:
                continue
            reason = scheduler.pending_reason(identifier) or ""
            earliest = pending.earliest_begin
            if earliest is not None and earliest > now:
                text = f"next {label} not before {format_time(earliest)}"
                if reason and reason != "waiting for earliest_begin":
                    text += f" ({reason})"
            else:
                text = f"{label} is due: {reason or 'launching'}"
            waits.append(text)
        return waits

    async def _history(self, task_id: str | None, limit: int) -> list[TaskRun]:
        await anyio.lowlevel.checkpoint()
        if task_id is not None and task_id != SYNC_TASK_ID:
            records = self.scheduler.history(task_id, limit=limit)
        else:
            records = self.scheduler.history(None, limit=max(limit, 1000))
        runs = [_record_to_task_run(record) for record in records]
        return [run for run in runs if task_id is None or run.task_id == task_id][:limit]

    async def _settle_scheduler(self) -> None:
        await self.scheduler.settle()
