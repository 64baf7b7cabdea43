"""The WorkManager-like adapter: the background sync service on :class:`~._workmanager.WorkManager`.

Work specs live in the store's SQLite file (``nx_work*`` tables), so a restart resumes
the schedule. The store's sync is one worker (``nexus-store.sync``) behind three pieces of
unique work:

- ``nexus-store.sync.periodic``: periodic work every ``min_interval`` under the config's
  constraints, backoff and execution time limit, enqueued with the ``UPDATE`` policy, so
  :meth:`~BackgroundSyncService.schedule_sync` after a restart keeps the next run time and
  counts (WM-17). It sends ``NORMAL`` ops (and ``LOW`` ones when the network is unmetered
  and the battery fine: the run itself holds ``LOW`` back).
- ``nexus-store.sync.critical``: a ``CRITICAL`` save asks for expedited one-time work
  (``RUN_AS_NON_EXPEDITED`` once the quota is used up, WM-14). Expedited work may only
  have network and storage constraints, so charging, battery and idle requirements do not
  hold a ``CRITICAL`` save back.
- ``nexus-store.sync.high``: a ``HIGH`` save asks for one-time work after
  ``high_priority_debounce``, unique with ``KEEP``: saves during the wait join that run.

Eligible work starts in priority order (expedited, then ``SyncPriority``, then FIFO:
:attr:`~._states.DispatchOrder.PRIORITY`, our departure from WM-21). The periodic floor is
androidx's 15 minutes unless the config lowers ``min_periodic_floor``; then the desktop
policy (:meth:`~._policy.SchedulingPolicy.desktop`) is used, explicitly and logged.

App jobs registered with :meth:`~BackgroundSyncService.register_task` become unique work
named by their task id (periodic: ``UPDATE``; one-time: ``KEEP``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio

from ..._clock import Clock
from ..._exceptions import LifecycleError
from ..._priority import SyncPriority
from ..._remote import RemoteBackend
from .._changes import ChangeSource
from .._config import MIN_PERIODIC_INTERVAL, BackgroundSyncConfig, ScheduleResult
from .._decisions import format_time
from .._jobs import JobConstraints, PeriodicSchedule
from .._service import BackgroundSyncService
from .._store_task import SYNC_TASK_ID
from .._task import RegisteredTask, TaskRun
from ..device._device import DeviceStateProvider
from ..engine._target import SyncTarget
from ._policy import Constraints, SchedulingPolicy
from ._records import RunRecord, WorkInfo, WorkQuery
from ._requests import OneTimeWorkRequestBuilder, PeriodicWorkRequestBuilder, WorkRequest
from ._running import ReleaseControl
from ._states import (
    BackoffPolicy,
    DispatchOrder,
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    StopReason,
    WorkState,
)
from ._watches import WorkWatch
from ._workmanager import WorkManager

__all__ = [
    "CRITICAL_WORK",
    "HIGH_WORK",
    "PERIODIC_WORK",
    "RUN_NOW_SUFFIX",
    "WorkManagerSyncService",
    "constraints_for",
    "critical_request",
    "high_request",
    "job_constraints",
    "job_states",
    "periodic_request",
    "policy_for",
    "run_now_request",
    "task_request",
]

PERIODIC_WORK = SYNC_TASK_ID + ".periodic"
"""Unique name of the periodic sync work."""
CRITICAL_WORK = SYNC_TASK_ID + ".critical"
"""Unique name of the expedited one-time sync work asked for by ``CRITICAL`` saves."""
HIGH_WORK = SYNC_TASK_ID + ".high"
"""Unique name of the debounced one-time sync work asked for by ``HIGH`` saves."""
RUN_NOW_SUFFIX = ".now"
"""A job's ``run_now`` work is unique under its id plus this suffix."""

_WAITING = frozenset({WorkState.ENQUEUED, WorkState.BLOCKED})


def work_ended(before: Mapping[str, WorkState], after: Mapping[str, WorkState]) -> bool:
    """Whether sync work ended or stopped between two snapshots of the unfinished work
    (gone from it, or back from RUNNING): the service looks at the queue again then. New
    work, or work starting, is what the service asked for: nothing to look at."""
    return any(
        work_id not in after
        or (state is WorkState.RUNNING and after[work_id] is not WorkState.RUNNING)
        for work_id, state in before.items()
    )


_UNFINISHED = frozenset({WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})
_LABELS = {
    PERIODIC_WORK: "periodic run",
    CRITICAL_WORK: "expedited run (CRITICAL)",
    HIGH_WORK: "HIGH run",
}


# -- requests from the config (pure) ----------------------------------------------------------


def policy_for(config: BackgroundSyncConfig) -> SchedulingPolicy:
    """The scheduling policy a config asks for: androidx floors unless the config lowers
    ``min_periodic_floor`` (the desktop/server policy); dispatch by priority."""
    common = {
        "dispatch_order": DispatchOrder.PRIORITY,
        "execution_time_limit": config.execution_time_limit,
    }
    if config.min_periodic_floor < MIN_PERIODIC_INTERVAL:
        return SchedulingPolicy.desktop(config.min_periodic_floor, **common)
    return SchedulingPolicy.android(**common)


def constraints_for(config: BackgroundSyncConfig, *, expedited: bool = False) -> Constraints:
    """The WorkManager constraints of a config; expedited work keeps network and storage only
    (WM-14)."""
    if expedited:
        return Constraints(
            required_network_type=config.effective_network_type,
            requires_storage_not_low=config.requires_storage_not_low,
        )
    return Constraints(
        required_network_type=config.effective_network_type,
        requires_charging=config.requires_charging,
        requires_battery_not_low=config.requires_battery_not_low,
        requires_storage_not_low=config.requires_storage_not_low,
        requires_device_idle=config.requires_device_idle,
    )


def _with_backoff(
    builder: OneTimeWorkRequestBuilder | PeriodicWorkRequestBuilder,
    config: BackgroundSyncConfig,
    constraints: Constraints,
) -> None:
    # Backoff criteria on device-idle work is refused (WM-15): keep the default then.
    if not constraints.requires_device_idle:
        builder.set_backoff_criteria(BackoffPolicy(config.backoff_policy), config.backoff_delay)
    builder.set_constraints(constraints)
    builder.set_execution_time_limit(config.execution_time_limit)


def periodic_request(config: BackgroundSyncConfig, policy: SchedulingPolicy) -> WorkRequest:
    """The periodic sync work of ``config`` (the interval clamped to ``policy``'s floor)."""
    builder = PeriodicWorkRequestBuilder(SYNC_TASK_ID, config.effective_interval, policy=policy)
    _with_backoff(builder, config, constraints_for(config))
    builder.set_priority(SyncPriority.NORMAL)
    return builder.build()


def critical_request(config: BackgroundSyncConfig) -> WorkRequest:
    """Expedited one-time sync work for ``CRITICAL`` saves."""
    builder = OneTimeWorkRequestBuilder(SYNC_TASK_ID)
    _with_backoff(builder, config, constraints_for(config, expedited=True))
    builder.set_expedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED)
    builder.set_priority(SyncPriority.CRITICAL)
    return builder.build()


def high_request(config: BackgroundSyncConfig) -> WorkRequest:
    """One-time sync work after the debounce, for ``HIGH`` saves."""
    builder = OneTimeWorkRequestBuilder(SYNC_TASK_ID)
    _with_backoff(builder, config, constraints_for(config))
    builder.set_initial_delay(config.high_priority_debounce)
    builder.set_priority(SyncPriority.HIGH)
    return builder.build()


def job_constraints(constraints: JobConstraints, *, expedited: bool = False) -> Constraints:
    """The WorkManager constraints of a job's; expedited work keeps network and storage."""
    if expedited:
        return Constraints(
            required_network_type=constraints.network_type,
            requires_storage_not_low=constraints.storage_not_low,
        )
    return Constraints(
        required_network_type=constraints.network_type,
        requires_charging=constraints.charging,
        requires_battery_not_low=constraints.battery_not_low,
        requires_storage_not_low=constraints.storage_not_low,
        requires_device_idle=constraints.idle,
    )


def task_request(
    registered: RegisteredTask, config: BackgroundSyncConfig, policy: SchedulingPolicy
) -> WorkRequest:
    """The work of an app job: periodic if it has an interval, else one-time. A job
    registered from a :class:`~.._jobs.JobDefinition` has its own schedule and constraints."""
    definition = registered.definition
    if definition is not None:
        constraints = job_constraints(definition.constraints)
    else:
        constraints = constraints_for(config) if registered.constrained else Constraints()
    flex = None
    if definition is not None and isinstance(definition.schedule, PeriodicSchedule):
        flex = definition.schedule.flex
    builder: OneTimeWorkRequestBuilder | PeriodicWorkRequestBuilder
    if registered.interval is not None:
        builder = PeriodicWorkRequestBuilder(
            registered.task_id, registered.interval, flex, policy=policy
        )
    else:
        builder = OneTimeWorkRequestBuilder(registered.task_id)
    _with_backoff(builder, config, constraints)
    builder.set_initial_delay(registered.initial_delay)
    return builder.build()


def run_now_request(registered: RegisteredTask, config: BackgroundSyncConfig) -> WorkRequest:
    """Expedited one-time work for a job's ``run_now`` (network and storage constraints
    only, WM-14; the others are reported, not waited for)."""
    definition = registered.definition
    if definition is not None:
        constraints = job_constraints(definition.constraints, expedited=True)
    elif registered.constrained:
        constraints = constraints_for(config, expedited=True)
    else:
        constraints = Constraints()
    builder = OneTimeWorkRequestBuilder(registered.task_id)
    builder.set_constraints(constraints)
    builder.set_execution_time_limit(config.execution_time_limit)
    builder.set_expedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED)
    builder.set_priority(SyncPriority.CRITICAL)
    return builder.build()


def _rank(info: WorkInfo) -> int:
    """Which of a job's works speaks for it: running, then waiting, then the latest."""
    if info.state is WorkState.RUNNING:
        return 2
    return 1 if info.state in _WAITING else 0


def job_states(infos: Sequence[WorkInfo]) -> dict[str, tuple[str, float | None]]:
    """Each job's state and next run time, from its works (oldest first)."""
    chosen: dict[str, WorkInfo] = {}
    for info in infos:
        current = chosen.get(info.worker_name)
        if current is None or _rank(info) >= _rank(current):
            chosen[info.worker_name] = info
    states: dict[str, tuple[str, float | None]] = {}
    for job, info in chosen.items():
        next_at = info.next_schedule_time if info.state is WorkState.ENQUEUED else None
        if next_at is not None and math.isinf(next_at):
            next_at = None
        states[job] = (info.state.value, next_at)
    return states


def _interrupted(info: WorkInfo, now: float) -> bool:
    """Waiting because the system stopped its last run (not because the run asked to retry)."""
    return (
        info.state is WorkState.ENQUEUED
        and info.stop_reason is not StopReason.NOT_STOPPED
        and info.next_schedule_time > now
    )


def _backing_off(info: WorkInfo, now: float) -> bool:
    """Waiting out the scheduler's backoff after a run that asked to retry."""
    return (
        info.state is WorkState.ENQUEUED
        and info.run_attempt_count > 0
        and info.next_schedule_time > now
    )


def _run_to_task_run(record: RunRecord) -> TaskRun:
    outcome = record.outcome.value if record.outcome is not None else "running"
    message = record.error or record.message or ""
    if record.stop_reason is not None and not message:
        message = f"stopped: {record.stop_reason.name}"
    return TaskRun(
        task_id=record.worker_name,
        source=record.work_id,
        started_at=record.started_at,
        ended_at=record.ended_at,
        duration=record.duration,
        success=None if record.outcome is None else outcome == "success",
        outcome=outcome,
        message=message,
        attempt=record.attempt,
        stop_reason=None if record.stop_reason is None else record.stop_reason.name,
    )


# -- the adapter ------------------------------------------------------------------------------


class WorkManagerSyncService(BackgroundSyncService):
    """The WorkManager-like background sync service (Linux, macOS, Windows, Android).

    Args:
        targets: the store (or stores) to sync.
        backend: where ops go; default the store's ``backend``.
        config: the configuration.
        clock: the time source (``FakeClock`` in tests).
        device: the device state (``SimulatedDevice`` in tests; the real machine by default).
        change_source: what wakes the service after commits (default: the store's change log).
        watch_commits: ``False`` to not react to commits by themselves.
        lease_for: seconds a pushed batch stays reserved.
        policy: the scheduling policy (default: :func:`policy_for` the config).
        driver: a test driver (``nexus_store.testing.WorkDriver``) releasing work by hand.
        keep_history: how long finished work and its run history are kept.
    """

    adapter_name = "workmanager"

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
        policy: SchedulingPolicy | None = None,
        driver: ReleaseControl | None = None,
        keep_history: timedelta = timedelta(days=7),
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
        self._policy = policy
        self._driver = driver
        self._keep_history = keep_history
        self._manager: WorkManager | None = None

    @property
    def is_supported(self) -> bool:
        """Always True: this adapter runs wherever Python runs with threads."""
        return True

    @property
    def manager(self) -> WorkManager:
        """The WorkManager (tags, unique work, WorkInfo snapshots, subscriptions).

        Raises:
            LifecycleError: the service is not running.
        """
        if self._manager is None:
            raise LifecycleError("the service is not started: use `async with service:`")
        return self._manager

    @property
    def scheduling_policy(self) -> SchedulingPolicy:
        """The policy in force (given, or derived from the config at start)."""
        return self._policy or policy_for(self.config)

    # -- adapter hooks ------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack) -> None:
        policy = self.scheduling_policy
        self._policy = policy
        manager = WorkManager(
            self._database,
            clock=self._clock,
            device=self._device,
            policy=policy,
            driver=self._driver,
        )
        await stack.enter_async_context(manager)
        self._manager = manager
        manager.register(self._sync_task)
        await manager.prune(self._keep_history.total_seconds())
        for registered in self._tasks.values():
            manager.register(registered.task)
            if self._job_enabled(registered.task_id):
                await self._enqueue_task(registered)
            else:  # switched off (maybe from another process while nothing ran)
                await manager.cancel_unique(registered.task_id)
        if not self._sync_enabled:
            await manager.cancel_by_tag(SYNC_TASK_ID)
        self._periodic = bool(await self._unique_infos(PERIODIC_WORK, _UNFINISHED))
        self._periodic_wanted = self._periodic
        watch = manager.subscribe(WorkQuery(tags=frozenset({SYNC_TASK_ID}), states=_UNFINISHED))
        stack.callback(watch.close)
        assert self._tg is not None
        self._tg.start_soon(self._follow_work, watch)

    async def _enqueue_task(self, registered: RegisteredTask) -> None:
        request = task_request(registered, self.config, self.scheduling_policy)
        if request.is_periodic:
            await self.manager.enqueue_unique(
                registered.task_id, ExistingPeriodicWorkPolicy.UPDATE, request
            )
        else:
            await self.manager.enqueue_unique(registered.task_id, ExistingWorkPolicy.KEEP, request)

    async def _job_switched(self, job_id: str, enabled: bool) -> None:
        unfinished = await self._unique_infos(job_id, _UNFINISHED)
        if enabled and not unfinished:
            await self._enqueue_task(self._tasks[job_id])
        elif not enabled and unfinished:
            await self.manager.cancel_unique(job_id)

    async def _job_run_now(self, job_id: str) -> ScheduleResult:
        name = job_id + RUN_NOW_SUFFIX
        if await self._unique_infos(name, _UNFINISHED):
            return ScheduleResult.ACCEPTED  # asked for already
        request = run_now_request(self._tasks[job_id], self.config)
        await self.manager.enqueue_unique(name, ExistingWorkPolicy.KEEP, request)
        return ScheduleResult.ACCEPTED

    async def _job_states(self) -> dict[str, tuple[str, float | None]]:
        infos = await self.manager.get_work_infos(WorkQuery())
        return job_states(infos)

    async def _follow_work(self, watch: WorkWatch[list[WorkInfo]]) -> None:
        before: dict[str, WorkState] = {}
        async for infos in watch:
            states = {info.id: info.state for info in infos}
            self._scheduler_changed(
                any(state in _WAITING for state in states.values()),
                look=work_ended(before, states),
            )
            before = states

    async def _unique_infos(self, name: str, states: frozenset[WorkState]) -> list[WorkInfo]:
        query = WorkQuery(unique_names=frozenset({name}), states=states)
        return await self.manager.get_work_infos(query)

    async def _schedule(self) -> ScheduleResult:
        request = periodic_request(self.config, self.scheduling_policy)
        await self.manager.enqueue_unique(PERIODIC_WORK, ExistingPeriodicWorkPolicy.UPDATE, request)
        return ScheduleResult.ACCEPTED

    async def _request_run(self, priority: SyncPriority) -> ScheduleResult:
        name = CRITICAL_WORK if priority is SyncPriority.CRITICAL else HIGH_WORK
        policy = ExistingWorkPolicy.KEEP
        existing = await self._unique_infos(name, _UNFINISHED)
        if existing:
            # Asked for already, or running (its end makes the service look again): no
            # write. Except work the system stopped (shutdown, crash): androidx counts it
            # as backed off from its old enqueue time, which after a short run means a
            # wait of a whole backoff delay; a fresh request runs now instead. And work
            # backing off after a failed run: the service asks only when ops are eligible
            # now (their own backoff ended, or the remote's pause did), so the queue and
            # the remote's pause decide when the next run comes, not the scheduler's
            # backoff (30 s and more).
            now = self._clock.now()
            if not any(_interrupted(i, now) or _backing_off(i, now) for i in existing):
                return ScheduleResult.ACCEPTED
            policy = ExistingWorkPolicy.REPLACE
        request = (
            critical_request(self.config)
            if priority is SyncPriority.CRITICAL
            else high_request(self.config)
        )
        # Not waited onto the disk: after a power cut the service asks again for what
        # the queue holds, so the wait would only delay the run.
        await self.manager.enqueue_unique(name, policy, request, durable=False)
        if priority is SyncPriority.CRITICAL:  # due now (HIGH waits out its debounce)
            self.manager._dispatch_now()  # starts now (when it may), not a turn later
        return ScheduleResult.ACCEPTED

    async def _cancel(self) -> None:
        await self.manager.cancel_by_tag(SYNC_TASK_ID)

    async def _has_schedule(self) -> bool:
        query = WorkQuery(tags=frozenset({SYNC_TASK_ID}), states=_WAITING)
        return bool(await self.manager.get_work_infos(query))

    async def _waits(self) -> list[str]:
        manager = self.manager
        now = self._clock.now()
        query = WorkQuery(tags=frozenset({SYNC_TASK_ID}), states=_WAITING)
        waits: list[str] = []
        for info in sorted(await manager.get_work_infos(query), key=lambda i: i.priority):
            label = _LABELS.get(info.unique_name or "", "sync run")
            when = info.next_schedule_time
            if when > now:
                if info.unique_name == HIGH_WORK and info.run_attempt_count == 0:
                    waits.append(f"debouncing HIGH saves until {format_time(when)}")
                elif info.run_attempt_count > 0:
                    waits.append(f"{label}: backing off until {format_time(when)}")
                else:
                    waits.append(f"next {label} at {format_time(when)}")
                continue
            why = await manager.why_not_running(info.id)
            waits.append(f"{label} is due: {why or 'starting'}")
        return waits

    async def _history(self, task_id: str | None, limit: int) -> list[TaskRun]:
        window = limit if task_id is None else max(limit, 1000)
        runs = await self.manager.run_history(None, limit=window)
        chosen = [run for run in runs if task_id is None or run.worker_name == task_id]
        return [_run_to_task_run(run) for run in chosen[:limit]]

    async def _settle_scheduler(self) -> None:
        await self.manager.settle()
        await anyio.lowlevel.checkpoint()

    def _device_reachability_changed(self) -> None:
        if self._manager is not None:
            self._manager.notify_device_changed()
        super()._device_reachability_changed()
