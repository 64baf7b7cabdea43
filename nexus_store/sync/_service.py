"""The background sync service: one API over a scheduler, the sync run and the queue.

:class:`BackgroundSyncService` is what an app holds (the reference API's
``initialize``/``schedule_sync``/``cancel_sync``/``status_stream``/``is_supported``). An
adapter decides *when* runs happen (the WorkManager-like, BGTask-like and no-op adapters);
this base class owns what every adapter shares:

- the store's sync as a task (:class:`StoreSyncTask`): one
  :class:`~nexus_store.sync.engine.SyncRunner` run at a time, with the device probed
  first, ``status`` set around it, and its progress and events published on the
  service's streams;
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

A paused remote (see :mod:`.engine._pause`: a ``Retry-After``, a remote failing again and again,
refused credentials) is asked nothing before its deadline, whatever is saved meanwhile;
at the deadline the service asks for a run at once if anything is queued (of any
priority), instead of waiting for the scheduler's own backoff or the next periodic run.
A remote paused for refused credentials is looked at again every few seconds (a look
costs no request until the token provider has a new token), so the queue drains as soon
as a usable token arrives. Waits are measured on the monotonic clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .._broadcast import Broadcast
from .._clock import Clock, SystemClock
from .._database import Database
from .._exceptions import LifecycleError
from .._priority import SyncPriority
from .._remote import RemoteBackend
from ..queue import PrioritySyncQueue
from ._changes import ChangeSource, CommitWatcher
from ._config import (
    BackgroundSyncConfig,
    BackgroundSyncStatus,
    ScheduleResult,
    ServiceState,
    unmet_constraints,
)
from ._decisions import _TRIGGERED, format_time
from ._job_control import _JobControl
from ._store_task import SYNC_TASK_ID, StoreSyncTask, _ReportingTask
from ._task import BackgroundSyncTask, RegisteredTask, TaskRun
from .device._constraints import SystemDevice
from .device._device import DeviceState, DeviceStateProvider
from .engine._pause import PauseReason, RemotePauses
from .engine._progress import SyncStreams, SyncSummary
from .engine._target import SyncTarget

__all__ = ["BackgroundSyncService"]

logger = logging.getLogger("nexus_store.sync.service")


def _default_device(backend: RemoteBackend | None, database: Database) -> DeviceStateProvider:
    url = getattr(backend, "base_url", None)
    folder = Path(database.path).parent if database.path != ":memory:" else Path()
    try:
        return SystemDevice(url if isinstance(url, str) else None, storage_path=folder)
    except ValueError:
        return SystemDevice(None, storage_path=folder)


class BackgroundSyncService(_JobControl):
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
            await anyio.to_thread.run_sync(self._open_jobs)
            await self._start(stack)
            self._state = ServiceState.RUNNING
            self._update_scheduled(await self._has_schedule())
            await tg.start(self._trigger_loop)
            self._start_pokes(tg)
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
        self._stop_pokes()
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
        self._periodic_wanted = True
        if not self._sync_enabled:  # switched off by a person: scheduled when switched on
            return ScheduleResult.ACCEPTED
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
        self._periodic_wanted = False
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
        self._controls_due = True  # and at the switches other processes may have flipped
        self._wake()
        while self._passes < target and self._state is ServiceState.RUNNING:
            assert self._pass_done is not None
            await self._pass_done.wait()
        await self._settle_scheduler()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state={self._state.value}, status={self.status.value})"
