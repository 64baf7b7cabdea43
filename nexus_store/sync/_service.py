"""The background sync service: one API over a scheduler, the sync run and the queue.

:class:`BackgroundSyncService` is what an app holds (the reference API's
``initialize``/``schedule_sync``/``cancel_sync``/``status_stream``/``is_supported``). An
adapter decides *when* runs happen (the WorkManager-like, BGTask-like and no-op adapters);
this base class owns what every adapter shares:

- the store's sync as a task (:class:`StoreSyncTask`): one :class:`~._runner.SyncRunner`
  run at a time, with the device probed first, ``status`` set around it, and its progress
  and events published on the service's streams;
- priorities driving timing: a commit watcher (in-process saves through the store's
  database object, and commits of other processes) wakes a trigger loop that asks the
  queue when the next ``CRITICAL`` and ``HIGH`` ops become eligible and asks the adapter
  for a run: ``CRITICAL`` now (expedited), ``HIGH`` after ``high_priority_debounce`` (so
  bursts batch); ``NORMAL`` waits for the periodic run; ``LOW`` too, and the run itself
  holds ``LOW`` back on a metered network or low battery;
- the app's own jobs (:meth:`BackgroundSyncService.register_task`), scheduled by the
  adapter under the same constraints, with the adapter's persisted run history;
- an explicit lifecycle: unstarted → running (``async with``) → stopped, with
  :class:`~nexus_store.LifecycleError` on misuse. Stopping cancels a run in progress; the
  run gives its leased ops back to the queue untouched.

Status: every subscriber of :attr:`BackgroundSyncService.status_stream` sees every
transition, in order: ``IDLE`` at first, ``SCHEDULED`` once a run is scheduled,
``RUNNING`` while one runs, then ``COMPLETED`` (the run finished and nothing failed) or
``FAILED`` (something failed, or the run was cut short), then ``SCHEDULED`` again while
more runs are scheduled; ``IDLE`` after :meth:`~BackgroundSyncService.cancel_sync`.

A loop guard: after a run, the ops it could not send (another collection's, ``LOW`` on a
metered network, the remote down) are not asked for again until something changes (a new
commit, a device change, an op's backoff ending), so a run never follows a run in a loop.

A paused remote (see :mod:`._pause`: a ``Retry-After``, a remote failing again and again,
refused credentials) is asked nothing before its deadline, whatever is saved meanwhile;
at the deadline the service asks for a run at once if anything is queued (of any
priority), instead of waiting for the scheduler's own backoff or the next periodic run.
A remote paused for refused credentials is looked at again every few seconds (a look
costs no request until the token provider has a new token), so the queue drains as soon
as a usable token arrives. Waits are measured on the monotonic clock.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from .._broadcast import Broadcast, Subscription
from .._clock import Clock, SystemClock
from .._database import Database
from .._exceptions import LifecycleError, NexusStoreError, StoreClosedError, SyncError
from .._priority import SyncPriority
from .._remote import RemoteBackend
from .._watch import ChangeOrigin, ChangeStream
from ..queue import PrioritySyncQueue
from ._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult, unmet_constraints
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult
from .device._constraints import SystemDevice
from .device._device import DeviceState, DeviceStateProvider
from .engine._pause import PauseReason, RemotePause, RemotePauses, remote_identity
from .engine._progress import SyncEvent, SyncProgress, SyncStopReason, SyncStreams, SyncSummary
from .engine._runner import SyncRunner, SyncTarget

__all__ = [
    "SYNC_TASK_ID",
    "BackgroundSyncService",
    "ChangeSource",
    "CommitWatcher",
    "RegisteredTask",
    "RequestPlan",
    "ServiceState",
    "StoreSyncTask",
    "TaskRun",
    "format_time",
    "plan_requests",
    "run_budget",
    "status_after",
    "sync_outcome",
]

logger = logging.getLogger("nexus_store.sync.service")

SYNC_TASK_ID = "nexus-store.sync"
"""The task id (worker name, tag) of the store's sync."""

_PROBE_FRESH = 5.0
"""Seconds a reachability probe is trusted before a run probes again."""

_TRIGGERED = (SyncPriority.CRITICAL, SyncPriority.HIGH)
"""Priorities that ask for a run of their own; NORMAL and LOW wait for the periodic run."""


class ServiceState(StrEnum):
    """The lifecycle of a :class:`BackgroundSyncService`."""

    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"


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


@dataclass(frozen=True)
class RegisteredTask:
    """An app job registered with :meth:`BackgroundSyncService.register_task`."""

    task: BackgroundSyncTask
    interval: timedelta | None
    """Periodic when set; one run per service start otherwise."""
    initial_delay: timedelta
    constrained: bool
    """Whether the config's constraints apply to it."""

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id


# -- decisions (pure) -------------------------------------------------------------------------


def sync_outcome(summary: SyncSummary) -> TaskResult:
    """What a scheduler should do after a sync run, as a task result.

    A run that left the remote paused (it asked for quiet, kept failing, or refused our
    credentials) is a failure without a scheduler retry: the service itself asks for the
    next run at the pause's deadline (a scheduler backoff would come later, or sooner,
    than the remote asked). A run that was refused or could not reach the remote otherwise
    (offline, failing, cancelled, a local error) asks for a retry (the scheduler backs
    off); ops that failed one by one wait for their own backoff in the queue, and also ask
    for a retry so they are sent again. Otherwise the run succeeded (dead-lettered ops are
    final and listed by the queue).
    """
    output = {
        "pushed": summary.pushed,
        "pulled": summary.pulled,
        "failed": summary.failed,
        "dead_lettered": summary.dead_lettered,
        "stop_reason": summary.stop_reason.value,
    }
    message = summary.message()
    if summary.stop_reason in (SyncStopReason.AUTH, SyncStopReason.PAUSED) or (
        summary.paused_until is not None
    ):
        return TaskResult.failure(output, message)
    if summary.stop_reason in (
        SyncStopReason.OFFLINE,
        SyncStopReason.FAILURES,
        SyncStopReason.RATE_LIMITED,
        SyncStopReason.CANCELLED,
        SyncStopReason.ERROR,
    ):
        return TaskResult.retry(message)
    if summary.failed:
        return TaskResult.retry(message)
    return TaskResult.success(output, message)


def status_after(summary: SyncSummary) -> BackgroundSyncStatus:
    """``COMPLETED`` when the run finished with nothing failed, else ``FAILED``."""
    return BackgroundSyncStatus.COMPLETED if summary.ok else BackgroundSyncStatus.FAILED


def run_budget(limit: timedelta | float) -> float:
    """The time budget of a scheduled run: 90 % of the execution time limit.

    The run then stops on its own and gives back what it holds before the scheduler's
    time limit stops it (WM-12), so a long backlog ends in a clean, resumable state.
    """
    seconds = limit.total_seconds() if isinstance(limit, timedelta) else float(limit)
    if not seconds > 0:
        raise ValueError("the execution time limit must be positive")
    return seconds * 0.9


@dataclass(frozen=True)
class RequestPlan:
    """What the trigger loop does after looking at the queue."""

    request: SyncPriority | None
    """Ask the adapter for a run of this priority now (``None``: nothing to ask)."""
    wake_at: float | None
    """Look again at this time (an op's backoff or lease ends), unless woken before."""


def plan_requests(
    now: float,
    next_eligible: Mapping[SyncPriority, float | None],
    *,
    stale: frozenset[SyncPriority] = frozenset(),
    paused_until: float | None = None,
    queued: bool = False,
    resumed: bool = False,
) -> RequestPlan:
    """Decide which run to ask for, from when the next op of each priority is eligible.

    Args:
        now: the current time.
        next_eligible: per priority, when its next op may be leased (at or before ``now``:
            one is eligible; ``None``: none queued); see
            :meth:`~nexus_store.PrioritySyncQueue.next_eligible_at`.
        stale: priorities whose eligible ops the last run saw and could not send, with
            nothing changed since: not asked for again (the loop guard).
        paused_until: the deadline of the remote's pause, if it has one (see
            :mod:`._pause`; for refused credentials, when to look again).
        queued: whether any op (of any priority) is queued.
        resumed: whether a run was already asked for since this pause ended (a run that
            does not reach the remote leaves the pause as it was: it is resumed once).

    Returns:
        While the remote is paused: nothing, and look again at its deadline. Once the
        deadline has passed: a ``CRITICAL`` run (a run now) if anything is queued (the
        pause is the loop guard here: a run that fails again pauses the remote anew).
        Otherwise ``CRITICAL`` if one is eligible (a run drains ``HIGH`` too), else
        ``HIGH`` if one is; and the earliest future eligibility among the two, to look
        again then.
    """
    if paused_until is not None:
        if paused_until > now:
            return RequestPlan(None, paused_until if queued else None)
        if queued and not resumed:
            return RequestPlan(SyncPriority.CRITICAL, None)
    request: SyncPriority | None = None
    wake_at: float | None = None
    for priority in _TRIGGERED:
        when = next_eligible.get(priority)
        if when is None:
            continue
        if when <= now:
            if request is None and priority not in stale:
                request = priority
        else:
            wake_at = when if wake_at is None else min(wake_at, when)
    return RequestPlan(request, wake_at)


def format_time(when: float) -> str:
    """A clock time as an ISO 8601 UTC string, to the second."""
    if not math.isfinite(when):
        return "never"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- commit watching --------------------------------------------------------------------------


@runtime_checkable
class ChangeSource(Protocol):
    """Tells the service that something may have been committed to the database."""

    def changes(self) -> AsyncIterator[None]:
        """Yield once per wake-up (several commits may share one); ends when closed."""
        ...

    def close(self) -> None:
        """Stop; the iterator ends."""
        ...


class CommitWatcher:
    """Wakes on local commits: writes through the same database object at once, commits of
    other connections and processes within ``poll_interval`` seconds (SQLite's
    ``data_version``), by following the store's change log. Changes that sync runs applied
    (pulled from the remote) do not count.

    Args:
        database: the store's database.
        poll_interval: seconds between checks for other processes' commits.
    """

    def __init__(self, database: Database, *, poll_interval: float = 1.0) -> None:
        self._database = database
        self._poll_interval = poll_interval
        self._stream: ChangeStream | None = None
        self._closed = False

    async def changes(self) -> AsyncIterator[None]:
        """Yield after each batch of local commits."""
        if self._closed:
            return
        try:
            stream = ChangeStream(self._database, None, poll_interval=self._poll_interval)
        except StoreClosedError:
            return
        self._stream = stream
        with stream:
            async for change in stream:
                # Drain what is buffered: one wake-up per batch of commits.
                local = change.origin is ChangeOrigin.LOCAL
                while True:
                    more = stream.get(timeout=0)
                    if more is None:
                        break
                    local = local or more.origin is ChangeOrigin.LOCAL
                if local:
                    yield None

    def close(self) -> None:
        """Stop following the log."""
        self._closed = True
        if self._stream is not None:
            self._stream.close()


# -- the store's sync as a task ---------------------------------------------------------------


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


# -- the service ------------------------------------------------------------------------------


def _default_device(backend: RemoteBackend | None, database: Database) -> DeviceStateProvider:
    url = getattr(backend, "base_url", None)
    folder = Path(database.path).parent if database.path != ":memory:" else Path()
    try:
        return SystemDevice(url if isinstance(url, str) else None, storage_path=folder)
    except ValueError:
        return SystemDevice(None, storage_path=folder)


async def _wait_until(event: anyio.Event, deadline: float | None, clock: Clock) -> bool:
    """Return when ``event`` is set or the wall-clock ``deadline`` comes (None: none).

    The wait is measured on the monotonic clock from now (``clock.sleep``), so a step of
    the wall clock meanwhile neither stretches nor cuts it.

    Returns:
        Whether the deadline came (rather than the event).
    """
    if deadline is None:
        await event.wait()
        return False
    fired = False
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                nonlocal fired
                await clock.sleep(deadline - clock.now())
                fired = True
                scope.cancel()

            tg.start_soon(timer)
            await event.wait()
            scope.cancel()
    return fired


class BackgroundSyncService(abc.ABC):
    """Keeps a store in sync in the background; an adapter decides when runs happen.

    Use it as an async context manager (it runs until the block ends)::

        service = BackgroundSyncServiceFactory.create(store, BackgroundSyncConfig())
        async with service:
            await service.schedule_sync()
            async for status in service.status_stream:
                ...

    Args:
        targets: the store (or stores, or model-less collections) to sync.
        backend: where ops go; default the first store's ``backend``.
        config: the configuration (default :class:`BackgroundSyncConfig()`); its
            ``max_attempts`` is applied to the stores' queues.
        clock: time for schedules (a ``FakeClock`` in tests); default the store's clock.
        device: the device state for constraints; default the real machine
            (:class:`~nexus_store.sync.device.SystemDevice`, probing the backend's URL).
        change_source: what wakes the trigger loop after commits; default a
            :class:`CommitWatcher` on the store's database.
        watch_commits: ``False`` to not watch commits at all (priorities then act only
            through :meth:`request_sync`).
        lease_for: seconds a pushed batch stays reserved (above the backend's timeout).

    Its methods belong to the event loop that runs it (call them from that loop's
    tasks); a synchronous app drives it from other threads through
    :class:`~nexus_store.sync.BackgroundSyncThread`. Saves may come from any thread.

    Raises:
        ValueError: no store given.
    """

    adapter_name: str = "abstract"
    """The adapter's short name (``workmanager``, ``bgtask``, ``noop``)."""
    max_tasks: int | None = None
    """How many app tasks the adapter can schedule (``None``: no limit)."""

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
    ) -> None:
        chosen: list[SyncTarget] = [targets] if isinstance(targets, SyncTarget) else list(targets)
        if not chosen:
            raise ValueError("a background sync service needs at least one store")
        if lease_for <= 0:
            raise ValueError("lease_for must be positive")
        self._targets = chosen
        self._backend = backend if backend is not None else getattr(chosen[0], "backend", None)
        self._config = config or BackgroundSyncConfig()
        self._clock: Clock = clock or getattr(chosen[0], "clock", None) or SystemClock()
        self._database: Database = chosen[0].database
        self._device = (
            device if device is not None else _default_device(self._backend, self._database)
        )
        if change_source is None and watch_commits:
            change_source = CommitWatcher(self._database)
        self._change_source = change_source if watch_commits else None
        self._lease_for = float(lease_for)
        self._streams = SyncStreams()
        self._statuses: Broadcast[BackgroundSyncStatus] = Broadcast(replay_last=True)
        self._statuses.publish(BackgroundSyncStatus.IDLE)
        self._state = ServiceState.UNSTARTED
        self._tasks: dict[str, RegisteredTask] = {}
        self._sync_task = StoreSyncTask(self)
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._run_lock: anyio.Lock | None = None
        self._poke: anyio.Event | None = None
        self._passes = 0
        self._pass_done: anyio.Event | None = None
        self._run_scopes: set[anyio.CancelScope] = set()
        self._active_runs = 0
        self._commits = 0
        self._stale: frozenset[SyncPriority] = frozenset()
        self._periodic = False
        self._scheduled = False
        self._loop_thread: int | None = None
        self._token: Any = None
        self._unsubscribe_device: Callable[[], None] | None = None
        self._last_summary: SyncSummary | None = None
        self._probed_at: float | None = None
        self._pauses: RemotePauses | None = None
        self._resumed_until: float | None = None

    # -- what every adapter answers ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def is_supported(self) -> bool:
        """Whether this platform can run background work (``False`` for the no-op adapter)."""

    @abc.abstractmethod
    async def _start(self, stack: AsyncExitStack) -> None:
        """Start the scheduler (entering its context on ``stack``) and schedule app tasks."""

    @abc.abstractmethod
    async def _schedule(self) -> ScheduleResult:
        """Schedule the periodic run (the one that sends ``NORMAL`` ops)."""

    @abc.abstractmethod
    async def _request_run(self, priority: SyncPriority) -> ScheduleResult:
        """Ask for a run for ``CRITICAL`` (now) or ``HIGH`` (after the debounce) ops.

        Must be cheap when such a run is already asked for or running (no write).
        """

    @abc.abstractmethod
    async def _cancel(self) -> None:
        """Cancel every scheduled sync run (a running one is stopped by the base class)."""

    @abc.abstractmethod
    async def _has_schedule(self) -> bool:
        """Whether a sync run is scheduled (waiting) now."""

    @abc.abstractmethod
    async def _waits(self) -> list[str]:
        """What scheduled sync runs wait for, in words (for :meth:`why_not_running`)."""

    @abc.abstractmethod
    async def _history(self, task_id: str | None, limit: int) -> list[TaskRun]:
        """The persisted run history, newest first."""

    async def _settle_scheduler(self) -> None:
        """Wait until the scheduler acted on everything asked so far (for tests)."""
        await anyio.lowlevel.checkpoint()

    # -- properties ---------------------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        """Unstarted, running or stopped."""
        return self._state

    @property
    def config(self) -> BackgroundSyncConfig:
        """The current configuration."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock the service reads."""
        return self._clock

    @property
    def device(self) -> DeviceStateProvider:
        """The device state provider."""
        return self._device

    @property
    def backend(self) -> RemoteBackend | None:
        """Where ops go."""
        return self._backend

    @property
    def targets(self) -> list[SyncTarget]:
        """The synced stores."""
        return list(self._targets)

    @property
    def status(self) -> BackgroundSyncStatus:
        """The current status."""
        last = self._statuses.last
        assert last is not None  # IDLE is published at construction
        return last

    @property
    def status_stream(self) -> Subscription[BackgroundSyncStatus]:
        """A new subscription to the status: the current status, then every transition in
        order; ends when the service stops. ``async for status in service.status_stream``."""
        return self._statuses.subscribe()

    @property
    def statuses(self) -> Broadcast[BackgroundSyncStatus]:
        """The status broadcast (``subscribe()``, or ``add_callback(fn)`` for callbacks)."""
        return self._statuses

    @property
    def events(self) -> Broadcast[SyncEvent]:
        """One event per finished run, of the sync and of app tasks (subscribe, or callback)."""
        return self._streams.events

    @property
    def progress(self) -> Broadcast[SyncProgress]:
        """Progress of sync runs: done/total per priority (subscribe, or callback)."""
        return self._streams.progress

    @property
    def last_summary(self) -> SyncSummary | None:
        """The summary of the last sync run, if any."""
        return self._last_summary

    @property
    def registered_tasks(self) -> Mapping[str, RegisteredTask]:
        """The app tasks registered with :meth:`register_task`."""
        return dict(self._tasks)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not ServiceState.UNSTARTED:
            raise LifecycleError(
                f"a background sync service runs once (it is {self._state.value}); make a new one"
            )
        self._database.check_open()
        self._run_lock = anyio.Lock()
        self._poke = anyio.Event()
        self._pass_done = anyio.Event()
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._apply_max_attempts()
        stack = AsyncExitStack()
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg = tg
            stack.callback(self._stop_background)
            await self._start(stack)
            self._state = ServiceState.RUNNING
            self._update_scheduled(await self._has_schedule())
            await tg.start(self._trigger_loop)
            if self._change_source is not None:
                tg.start_soon(self._follow_changes, self._change_source)
            if callable(getattr(self._device, "probe_network", None)):
                tg.start_soon(self._probe_loop)
            subscribe = getattr(self._device, "subscribe", None)
            if callable(subscribe):
                self._unsubscribe_device = subscribe(self._on_device_change)
        except BaseException:
            self._state = ServiceState.STOPPED
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._close_streams()
            raise
        self._stack = stack
        logger.info("%s background sync service started", self.adapter_name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._stack is None:
            raise LifecycleError("the service was not started")
        self._state = ServiceState.STOPPED
        if self._unsubscribe_device is not None:
            self._unsubscribe_device()
            self._unsubscribe_device = None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._stack = None
            self._close_streams()
            logger.info("%s background sync service stopped", self.adapter_name)

    def _stop_background(self) -> None:
        if self._change_source is not None:
            self._change_source.close()
        for scope in list(self._run_scopes):
            scope.cancel()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _close_streams(self) -> None:
        self._statuses.close()
        self._streams.close()

    def _check_running(self) -> None:
        if self._state is ServiceState.UNSTARTED:
            raise LifecycleError("the service is not started: use `async with service:`")
        if self._state is ServiceState.STOPPED:
            raise LifecycleError("the service is stopped")

    def _apply_max_attempts(self) -> None:
        queues: dict[int, PrioritySyncQueue] = {id(t.queue): t.queue for t in self._targets}
        for queue in queues.values():
            queue.max_attempts = self._config.max_attempts

    # -- the public API -----------------------------------------------------------------------

    async def initialize(self, config: BackgroundSyncConfig) -> None:
        """Use ``config`` from now on; a scheduled periodic run is rescheduled with it.

        ``enabled=False`` cancels the sync's schedule. A scheduler's policy (the
        WorkManager-like periodic floor) is read when the service starts.

        Raises:
            LifecycleError: the service is stopped.
            TypeError: ``config`` is not a :class:`BackgroundSyncConfig`.
        """
        if self._state is ServiceState.STOPPED:
            raise LifecycleError("the service is stopped")
        if not isinstance(config, BackgroundSyncConfig):
            raise TypeError("initialize() takes a BackgroundSyncConfig")
        self._config = config
        self._apply_max_attempts()
        if self._state is ServiceState.RUNNING:
            if not config.enabled:
                await self.cancel_sync()
            elif self._periodic:
                await self._schedule()
            self._wake()
        await anyio.lowlevel.checkpoint()

    async def schedule_sync(self) -> ScheduleResult:
        """Schedule the periodic run (every ``min_interval``, under the constraints).

        Saved ``CRITICAL`` and ``HIGH`` ops get runs of their own as they come. Calling it
        again (after a restart, say) keeps the schedule where it was.

        Returns:
            ``ACCEPTED``; ``REJECTED_OS_POLICY`` when the platform refused;
            ``UNSUPPORTED`` without background execution (or with ``enabled=False``).

        Raises:
            LifecycleError: the service is not running.
        """
        self._check_running()
        if not self.is_supported or not self._config.enabled:
            return ScheduleResult.UNSUPPORTED
        result = await self._schedule()
        if result is ScheduleResult.ACCEPTED:
            self._periodic = True
            self._update_scheduled(await self._has_schedule())
            self._wake()
        return result

    async def request_sync(
        self, priority: SyncPriority | int | str = SyncPriority.NORMAL
    ) -> ScheduleResult:
        """Ask for a run with the timing of ``priority``.

        ``CRITICAL``: now (expedited). ``HIGH``: after ``high_priority_debounce`` (repeated
        requests meanwhile join it). ``NORMAL``/``LOW``: the periodic run (scheduled now if
        it is not).

        Raises:
            LifecycleError: the service is not running.
        """
        self._check_running()
        level = SyncPriority.coerce(priority)
        if not self.is_supported or not self._config.enabled:
            return ScheduleResult.UNSUPPORTED
        if level in _TRIGGERED:
            result = await self._request_run(level)
            if result is ScheduleResult.ACCEPTED:
                self._update_scheduled(await self._has_schedule())
            return result
        if self._periodic:
            return ScheduleResult.ACCEPTED
        return await self.schedule_sync()

    async def cancel_sync(self) -> None:
        """Cancel every scheduled sync run and stop a running one.

        A stopped run gives its leased ops back to the queue untouched. App tasks keep
        their schedules. The status becomes ``IDLE``.

        Raises:
            LifecycleError: the service is not running.
        """
        self._check_running()
        self._periodic = False
        await self._cancel()
        for scope in list(self._run_scopes):
            scope.cancel()
        if self._run_lock is not None:
            # Wait until a stopped run has given its ops back.
            async with self._run_lock:
                pass
        self._scheduled = False
        self._set_status(BackgroundSyncStatus.IDLE)

    async def sync_now(self) -> SyncSummary:
        """Run the sync once now, whatever the schedule and constraints say (a manual run).

        Waits for a run in progress to end first.

        Raises:
            LifecycleError: the service is not running.
            SyncError: no backend to sync with.
        """
        self._check_running()
        return await self._run_sync(budget=None, trigger="manual")

    def register_task(
        self,
        task: BackgroundSyncTask,
        *,
        interval: timedelta | None = None,
        initial_delay: timedelta = timedelta(0),
        constrained: bool = True,
    ) -> None:
        """Register an app job (cache cleanup, fetching notifications...) to run in the
        background under the same scheduler, with a persisted run history.

        Register before starting the service (iOS requires every handler at launch, BG-1).
        Periodic jobs (``interval``) keep their schedule across restarts; a job without an
        interval runs once per service start (unless one from before is still pending).

        Args:
            task: the job; its ``task_id`` names it in the schedule and the history.
            interval: run every ``interval`` (clamped to the periodic floor).
            initial_delay: wait this long before the first run.
            constrained: whether the config's constraints apply (network, charging...).

        Raises:
            LifecycleError: the service was already started.
            TypeError: ``task`` is not a BackgroundSyncTask.
            ValueError: a duplicate or reserved task id, or a bad interval/delay.
        """
        if self._state is not ServiceState.UNSTARTED:
            raise LifecycleError("register tasks before starting the service")
        if not isinstance(task, BackgroundSyncTask):
            raise TypeError("register_task() takes a BackgroundSyncTask (task_id and execute())")
        task_id = task.task_id
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("a task needs a non-empty string task_id")
        if task_id == SYNC_TASK_ID or task_id.startswith(SYNC_TASK_ID + "."):
            raise ValueError(f"the task id {task_id!r} is reserved for the store's sync")
        if task_id in self._tasks:
            raise ValueError(f"a task {task_id!r} is already registered")
        if self.max_tasks is not None and len(self._tasks) >= self.max_tasks:
            raise ValueError(
                f"the {self.adapter_name} adapter schedules at most {self.max_tasks} tasks"
            )
        if interval is not None and interval <= timedelta(0):
            raise ValueError("interval must be positive")
        if initial_delay < timedelta(0):
            raise ValueError("initial_delay must not be negative")
        self._tasks[task_id] = RegisteredTask(
            _ReportingTask(task, self), interval, initial_delay, constrained
        )

    async def why_not_running(self) -> str:
        """Why the sync is not running now, in words: the unmet constraints and the waits
        ("offline", "next periodic run at ...", "debouncing HIGH saves until ...")."""
        if self._state is ServiceState.UNSTARTED:
            return "the service is not started (use `async with service:`)"
        if self._state is ServiceState.STOPPED:
            return "the service is stopped"
        if self._active_runs:
            return "running"
        if not self._config.enabled:
            return "background sync is disabled (config.enabled is False)"
        parts: list[str] = []
        try:
            device: DeviceState | None = self._device.current()
        except Exception:  # a probe failing is an answer, not a crash
            logger.warning("reading the device state failed", exc_info=True)
            device = None
        if device is None:
            parts.append("the device state cannot be read")
        else:
            unmet = unmet_constraints(self._config, device)
            if not device.connected:
                parts.append("offline")
                unmet = [u for u in unmet if not u.startswith("network")]
            parts.extend(unmet)
        parts.extend(await self._pause_words())
        waits = await self._waits()
        if waits:
            parts.extend(waits)
        elif self.is_supported:
            parts.append(
                "not scheduled: call schedule_sync() (CRITICAL and HIGH saves ask for runs)"
            )
        return "; ".join(parts)

    async def _pause_words(self) -> list[str]:
        """The remote's pause, in words (none if it is not paused)."""
        pause = await anyio.to_thread.run_sync(self._remote_pause)
        if pause is None or pause.until <= self._clock.now():
            return []
        if pause.reason is PauseReason.AUTH:
            return [
                "the remote refused our credentials: waiting for a new token "
                f"(next look at {format_time(pause.until)})"
            ]
        return [f"the remote is paused ({pause.reason.value}) until {format_time(pause.until)}"]

    async def run_history(self, task_id: str | None = None, *, limit: int = 100) -> list[TaskRun]:
        """Persisted runs (of ``task_id``, or all), newest first.

        Raises:
            LifecycleError: the service is not running.
        """
        self._check_running()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._history(task_id, limit)

    async def settle(self) -> None:
        """Wait until the service has looked at the queue once more and its scheduler has
        acted on what it was asked (for tests: call after saving or moving the clock)."""
        self._check_running()
        target = self._passes + 1
        self._wake()
        while self._passes < target and self._state is ServiceState.RUNNING:
            assert self._pass_done is not None
            await self._pass_done.wait()
        await self._settle_scheduler()

    # -- running the sync ---------------------------------------------------------------------

    async def _run_sync(self, *, budget: float | None, trigger: str) -> SyncSummary:
        if self._backend is None:
            raise SyncError("no backend to sync with: pass backend= or give the store one")
        if self._run_lock is None:
            raise LifecycleError("the service is not started")
        self._active_runs += 1
        try:
            async with self._run_lock:
                return await self._run_locked(self._backend, budget, trigger)
        finally:
            self._active_runs -= 1
            if not self._active_runs:
                self._update_scheduled(self._scheduled)
            self._wake()

    async def _run_locked(
        self, backend: RemoteBackend, budget: float | None, trigger: str
    ) -> SyncSummary:
        commits_before = self._commits
        probe = getattr(self._device, "probe_network", None)
        now = self._clock.monotonic()
        if callable(probe) and (self._probed_at is None or now - self._probed_at > _PROBE_FRESH):
            # Reachability is only known by trying; a recent answer is good enough (the
            # run itself finds out if the remote went away since).
            with anyio.CancelScope(shield=True):
                await probe()
            self._probed_at = now
        self._set_status(BackgroundSyncStatus.RUNNING)
        logger.debug("sync run starting (%s)", trigger)
        runner = SyncRunner(
            self._targets,
            backend,
            clock=self._clock,
            device=self._device,
            batch_size=self._config.batch_size,
            lease_for=self._lease_for,
            budget=budget,
            streams=self._streams,
            task_id=SYNC_TASK_ID,
        )
        scope = anyio.CancelScope()
        self._run_scopes.add(scope)
        summary: SyncSummary | None = None
        try:
            with scope:
                summary = await runner.run()
        except BaseException:
            # A run cut short by the service stopping gave its ops back: not a failure.
            stopping = self._state is ServiceState.STOPPED
            self._set_status(BackgroundSyncStatus.IDLE if stopping else BackgroundSyncStatus.FAILED)
            raise
        finally:
            self._run_scopes.discard(scope)
        if summary is None:  # cancelled through cancel_sync(): the runner gave its ops back
            summary = runner.last_summary
            if summary is None:
                raise SyncError("the sync run was cancelled before it started")
        self._last_summary = summary
        if self._commits == commits_before and summary.stop_reason is not SyncStopReason.BUDGET:
            self._stale = frozenset(_TRIGGERED)
        self._set_status(status_after(summary))
        return summary

    # -- status -------------------------------------------------------------------------------

    def _set_status(self, status: BackgroundSyncStatus) -> None:
        if self._statuses.last is not status:
            self._statuses.publish(status)

    def _update_scheduled(self, scheduled: bool) -> None:
        """After the scheduler changed: ``SCHEDULED`` while a run waits and none runs."""
        self._scheduled = scheduled
        if self._state is not ServiceState.RUNNING or self._active_runs:
            return
        if scheduled and self.status is not BackgroundSyncStatus.RUNNING:
            self._set_status(BackgroundSyncStatus.SCHEDULED)

    def _scheduler_changed(self, scheduled: bool) -> None:
        """Adapters call this (on the loop thread) after every change of sync work."""
        self._update_scheduled(scheduled)
        self._wake()

    # -- the trigger loop ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()

    def _call_in_loop(self, func: Callable[[], None]) -> None:
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            func()
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended: nothing to wake
            anyio.from_thread.run_sync(func, token=self._token)

    def _on_device_change(self, _state: DeviceState) -> None:
        if self._state is ServiceState.RUNNING:
            self._call_in_loop(self._fresh_look)

    def _fresh_look(self) -> None:
        """Something changed (a commit, the device): ask again for what waits."""
        self._stale = frozenset()
        self._wake()

    async def _follow_changes(self, source: ChangeSource) -> None:
        try:
            async for _ in source.changes():
                self._commits += 1
                self._fresh_look()
        except StoreClosedError:
            logger.info("the store was closed: no longer watching commits")

    async def _trigger_loop(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        assert self._poke is not None
        while True:
            self._poke = poke = anyio.Event()
            wake_at: float | None = None
            try:
                wake_at = await self._check_queue()
            except StoreClosedError:
                logger.info("the store was closed: the trigger loop stops")
                self._pass_finished()
                return
            except NexusStoreError:
                logger.exception("looking at the queue failed; trying again on the next change")
            self._pass_finished()
            if await _wait_until(poke, wake_at, self._clock):
                # An op's backoff, a lease or the remote's pause ended: new work.
                self._stale = frozenset()

    def _pass_finished(self) -> None:
        self._passes += 1
        done, self._pass_done = self._pass_done, anyio.Event()
        if done is not None:
            done.set()

    async def _check_queue(self) -> float | None:
        if not self.is_supported or not self._config.enabled or self._backend is None:
            return None
        next_eligible, pause, queued = await anyio.to_thread.run_sync(self._look)
        now = self._clock.now()
        resumed = pause is not None and pause.until == self._resumed_until
        plan = plan_requests(
            now,
            next_eligible,
            stale=self._stale,
            paused_until=None if pause is None else pause.until,
            queued=queued,
            resumed=resumed,
        )
        if pause is not None and pause.until <= now and plan.request is not None:
            self._resumed_until = pause.until
        if plan.request is not None:
            try:
                result = await self._request_run(plan.request)
            except NexusStoreError:
                logger.exception("asking for a %s sync run failed", plan.request.name)
            else:
                if result is ScheduleResult.ACCEPTED:
                    self._update_scheduled(await self._has_schedule())
                else:
                    logger.info("a %s sync run was refused: %s", plan.request.name, result.value)
        return plan.wake_at

    def _remote_pause(self) -> RemotePause | None:
        """The backend's pause recorded in the file, if any (see :mod:`._pause`)."""
        if self._backend is None:
            return None
        if self._pauses is None:
            self._pauses = RemotePauses(self._database, remote_identity(self._backend))
        return self._pauses.current(self._clock.now())

    def _look(self) -> tuple[dict[SyncPriority, float | None], RemotePause | None, bool]:
        """What the trigger loop decides on (in a worker thread): when each triggering
        priority is next eligible, the remote's pause, and whether anything is queued."""
        pause = self._remote_pause()
        queued = pause is not None and any(
            t.queue.next_eligible_at() is not None for t in self._targets
        )
        return self._next_eligible(), pause, queued

    def _next_eligible(self) -> dict[SyncPriority, float | None]:
        queues: dict[int, PrioritySyncQueue] = {id(t.queue): t.queue for t in self._targets}
        found: dict[SyncPriority, float | None] = {}
        for priority in _TRIGGERED:
            times = [
                when
                for queue in queues.values()
                if (when := queue.next_eligible_at(priorities=[priority])) is not None
            ]
            found[priority] = min(times) if times else None
        return found

    # -- network probing ----------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Re-probe reachability (quickly while offline) so waiting work learns it is back."""
        probe = getattr(self._device, "probe_network", None)
        assert callable(probe)
        last: bool | None = None
        offline_delay = 2.0
        while True:
            connected = bool(await probe())
            self._probed_at = self._clock.monotonic()
            if last is not None and connected != last:
                self._device_reachability_changed()
            last = connected
            if connected:
                offline_delay = 2.0
                await self._clock.sleep(60.0)
            else:
                await self._clock.sleep(offline_delay)
                offline_delay = min(60.0, offline_delay * 2)

    def _device_reachability_changed(self) -> None:
        """The probe saw the network come or go: tell the scheduler, look again."""
        self._fresh_look()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self._state.value}, status={self.status.value})"
