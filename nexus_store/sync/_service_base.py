"""What the background service's parts share: its state, the adapter's hooks, its properties.

:class:`~nexus_store.sync.BackgroundSyncService` is built in layers, one module each:
this base (the state set by ``__init__``, the hooks every adapter answers, read-only
properties), the machinery that runs syncs and decides when to ask for them
(:mod:`._triggers`), and the service itself (:mod:`._service`: lifecycle and public API).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .._broadcast import Broadcast, Subscription
from .._clock import Clock
from .._database import Database
from .._priority import SyncPriority
from .._remote import RemoteBackend
from ._changes import ChangeSource
from ._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult, ServiceState
from ._store_task import StoreSyncTask
from ._task import RegisteredTask, TaskRun
from .device._device import DeviceStateProvider
from .engine._pause import RemotePauses
from .engine._progress import SyncEvent, SyncProgress, SyncStreams, SyncSummary
from .engine._target import SyncTarget

__all__: list[str] = []


class _ServiceBase(abc.ABC):
    """The state, adapter hooks and properties of a background sync service."""

    _targets: list[SyncTarget]
    _backend: RemoteBackend | None
    _config: BackgroundSyncConfig
    _clock: Clock
    _database: Database
    _device: DeviceStateProvider
    _change_source: ChangeSource | None
    _lease_for: float
    _streams: SyncStreams
    _statuses: Broadcast[BackgroundSyncStatus]
    _state: ServiceState
    _tasks: dict[str, RegisteredTask]
    _sync_task: StoreSyncTask
    _stack: AsyncExitStack | None
    _tg: anyio.abc.TaskGroup | None
    _run_lock: anyio.Lock | None
    _poke: anyio.Event | None
    _passes: int
    _pass_done: anyio.Event | None
    _run_scopes: set[anyio.CancelScope]
    _active_runs: int
    _commits: int
    _stale: frozenset[SyncPriority]
    _periodic: bool
    _scheduled: bool
    _loop_thread: int | None
    _token: Any
    _unsubscribe_device: Callable[[], None] | None
    _last_summary: SyncSummary | None
    _probed_at: float | None
    _pauses: RemotePauses | None
    _resumed_until: float | None

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
        """What scheduled sync runs wait for, in words (for ``why_not_running``)."""

    @abc.abstractmethod
    async def _history(self, task_id: str | None, limit: int) -> list[TaskRun]:
        """The persisted run history, newest first."""

    async def _settle_scheduler(self) -> None:
        """Wait until the scheduler acted on everything asked so far (for tests)."""
        await anyio.lowlevel.checkpoint()

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
        """The app tasks registered with :meth:`~._service.BackgroundSyncService.register_task`."""
        return dict(self._tasks)
