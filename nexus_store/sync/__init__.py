"""Background sync: the service an app holds, its configuration and factory, and what it reports.

- :class:`BackgroundSyncService` (``initialize``, ``schedule_sync``, ``cancel_sync``,
  ``status_stream``, ``is_supported``), made for the platform by
  :class:`BackgroundSyncServiceFactory` from a :class:`BackgroundSyncConfig`;
  :class:`BackgroundSyncThread` runs one for a synchronous app; :class:`SyncWorker` runs
  one as a daemon beside the app (``nexus-store worker``).
- The adapters: :class:`WorkManagerSyncService` (desktop, server, Android),
  :class:`BGTaskSyncService` (iOS), :class:`NoopSyncService` (no background execution).
- The app's own jobs: :class:`BackgroundSyncTask` with its :class:`TaskContext` and
  :class:`TaskResult`; the persisted history as :class:`TaskRun`. Jobs people steer:
  :class:`JobDefinition` (:class:`PeriodicSchedule` / :class:`OneTimeSchedule`,
  :class:`JobConstraints`), shown as :class:`JobInfo`; ``run_now`` answers a
  :class:`RunNowResult`.
- What a run reports: :class:`SyncProgress`, :class:`SyncEvent`, :class:`SyncSummary`.
- The device the constraints are checked against: :class:`DeviceState`,
  :class:`SystemDevice`.

The rooms below keep their own doors: :mod:`nexus_store.sync.engine` (one sync run:
``SyncRunner``, ``RawCollection``, ``EngineConfig``), :mod:`nexus_store.sync.workmanager`
and :mod:`nexus_store.sync.bgtask` (the schedulers, their requests and records),
:mod:`nexus_store.sync.device` (device state, ``SimulatedDevice``).

Imports run downward only: the rooms never import this door; the service's base sits
below the schedulers, and the factory and the worker, which choose and run a scheduler,
sit above them.
"""

from __future__ import annotations

from ._bridge import BackgroundSyncThread
from ._changes import ChangeSource, CommitWatcher
from ._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult, ServiceState
from ._factory import AdapterKind, BackgroundSyncServiceFactory, choose_adapter
from ._jobs import (
    JobConstraints,
    JobDefinition,
    JobInfo,
    OneTimeSchedule,
    PeriodicSchedule,
    RunNowResult,
)
from ._noop import NoopSyncService
from ._service import BackgroundSyncService
from ._store_task import StoreSyncTask
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult, TaskRun
from ._worker import SyncWorker
from ._worker_lease import WorkerLease
from .bgtask import BGTaskSyncService
from .device import DeviceState, DeviceStateProvider, NetworkType, SystemDevice
from .engine import (
    PriorityProgress,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncSummary,
)
from .workmanager import WorkManagerSyncService

__all__ = [
    "AdapterKind",
    "BGTaskSyncService",
    "BackgroundSyncConfig",
    "BackgroundSyncService",
    "BackgroundSyncServiceFactory",
    "BackgroundSyncStatus",
    "BackgroundSyncTask",
    "BackgroundSyncThread",
    "ChangeSource",
    "CommitWatcher",
    "DeviceState",
    "DeviceStateProvider",
    "JobConstraints",
    "JobDefinition",
    "JobInfo",
    "NetworkType",
    "NoopSyncService",
    "OneTimeSchedule",
    "PeriodicSchedule",
    "PriorityProgress",
    "PrioritySummary",
    "RunNowResult",
    "ScheduleResult",
    "ServiceState",
    "StoreSyncTask",
    "SyncEvent",
    "SyncPhase",
    "SyncProgress",
    "SyncStopReason",
    "SyncSummary",
    "SyncWorker",
    "SystemDevice",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
    "TaskRun",
    "WorkManagerSyncService",
    "WorkerLease",
    "choose_adapter",
]
