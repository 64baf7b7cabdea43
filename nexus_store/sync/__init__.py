"""Moving data and deciding when: the sync engine and the background sync service."""

from __future__ import annotations

from ._bridge import BackgroundSyncThread
from ._changes import ChangeSource, CommitWatcher
from ._config import BackgroundSyncConfig, BackgroundSyncStatus, ScheduleResult, ServiceState
from ._factory import AdapterKind, BackgroundSyncServiceFactory, choose_adapter
from ._noop import NoopSyncService
from ._service import BackgroundSyncService
from ._store_task import StoreSyncTask
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult, TaskRun
from ._worker import SyncWorker
from ._worker_lease import WorkerLease
from .bgtask._adapter import BGTaskSyncService
from .bgtask._bgtask import BGTaskScheduler
from .bgtask._handle import BGTaskHandle, BGTaskHandler, LaunchRecord, handler_for_task
from .bgtask._launch import (
    AppUsage,
    DeterministicLaunchPolicy,
    LaunchContext,
    LaunchDecision,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
)
from .bgtask._requests import (
    AppRefreshRequest,
    BGTaskRequest,
    ContinuedProcessingRequest,
    ProcessingRequest,
    RequestKind,
    SubmissionStrategy,
)
from .device._constraints import SystemDevice
from .device._device import DeviceState, DeviceStateProvider, NetworkType, SimulatedDevice
from .engine._engine import EngineConfig
from .engine._progress import (
    PriorityProgress,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)
from .engine._rawtable import RawCollection, discover_collections
from .engine._runner import SyncRunner
from .engine._target import SyncTarget
from .workmanager._adapter import WorkManagerSyncService
from .workmanager._policy import Constraints, SchedulingPolicy
from .workmanager._records import RunRecord, WorkInfo, WorkQuery
from .workmanager._requests import (
    OneTimeWorkRequestBuilder,
    PeriodicWorkRequestBuilder,
    WorkRequest,
)
from .workmanager._running import ManagerState
from .workmanager._states import (
    BackoffPolicy,
    DispatchOrder,
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    RunOutcome,
    StopReason,
    UpdateResult,
    WorkState,
)
from .workmanager._watches import WorkWatch
from .workmanager._workmanager import WorkManager

__all__ = [
    "AdapterKind",
    "AppRefreshRequest",
    "AppUsage",
    "BGTaskHandle",
    "BGTaskHandler",
    "BGTaskRequest",
    "BGTaskScheduler",
    "BGTaskSyncService",
    "BackgroundSyncConfig",
    "BackgroundSyncService",
    "BackgroundSyncServiceFactory",
    "BackgroundSyncStatus",
    "BackgroundSyncTask",
    "BackgroundSyncThread",
    "BackoffPolicy",
    "ChangeSource",
    "CommitWatcher",
    "Constraints",
    "ContinuedProcessingRequest",
    "DeterministicLaunchPolicy",
    "DeviceState",
    "DeviceStateProvider",
    "DispatchOrder",
    "EngineConfig",
    "ExistingPeriodicWorkPolicy",
    "ExistingWorkPolicy",
    "LaunchContext",
    "LaunchDecision",
    "LaunchPolicy",
    "LaunchRecord",
    "ManagerState",
    "NetworkType",
    "NoopSyncService",
    "OneTimeWorkRequestBuilder",
    "OpportunisticLaunchPolicy",
    "OutOfQuotaPolicy",
    "PeriodicWorkRequestBuilder",
    "PriorityProgress",
    "PrioritySummary",
    "ProcessingRequest",
    "RawCollection",
    "RequestKind",
    "RunOutcome",
    "RunRecord",
    "ScheduleResult",
    "SchedulingPolicy",
    "ServiceState",
    "SimulatedDevice",
    "StopReason",
    "StoreSyncTask",
    "SubmissionStrategy",
    "SyncEvent",
    "SyncPhase",
    "SyncProgress",
    "SyncRunner",
    "SyncStopReason",
    "SyncStreams",
    "SyncSummary",
    "SyncTarget",
    "SyncWorker",
    "SystemDevice",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
    "TaskRun",
    "UpdateResult",
    "WorkInfo",
    "WorkManager",
    "WorkManagerSyncService",
    "WorkQuery",
    "WorkRequest",
    "WorkState",
    "WorkWatch",
    "WorkerLease",
    "choose_adapter",
    "discover_collections",
    "handler_for_task",
]
