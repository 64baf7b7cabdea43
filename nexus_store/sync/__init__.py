"""Moving data and deciding when: the sync engine and the background sync service."""

from __future__ import annotations

from ._bgrequests import (
    AppRefreshRequest,
    AppUsage,
    BGTaskRequest,
    ContinuedProcessingRequest,
    DeterministicLaunchPolicy,
    LaunchContext,
    LaunchDecision,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
    ProcessingRequest,
    RequestKind,
    SubmissionStrategy,
)
from ._bgtask import BGTaskHandle, BGTaskHandler, BGTaskScheduler, LaunchRecord, handler_for_task
from ._device import DeviceState, DeviceStateProvider, NetworkType, SimulatedDevice
from ._engine import EngineConfig
from ._progress import (
    PriorityProgress,
    PrioritySummary,
    SyncEvent,
    SyncPhase,
    SyncProgress,
    SyncStopReason,
    SyncStreams,
    SyncSummary,
)
from ._rawtable import RawCollection, discover_collections
from ._runner import SyncRunner, SyncTarget
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult

__all__ = [
    "AppRefreshRequest",
    "AppUsage",
    "BGTaskHandle",
    "BGTaskHandler",
    "BGTaskRequest",
    "BGTaskScheduler",
    "BackgroundSyncTask",
    "ContinuedProcessingRequest",
    "DeterministicLaunchPolicy",
    "DeviceState",
    "DeviceStateProvider",
    "EngineConfig",
    "LaunchContext",
    "LaunchDecision",
    "LaunchPolicy",
    "LaunchRecord",
    "NetworkType",
    "OpportunisticLaunchPolicy",
    "PriorityProgress",
    "PrioritySummary",
    "ProcessingRequest",
    "RawCollection",
    "RequestKind",
    "SimulatedDevice",
    "SubmissionStrategy",
    "SyncEvent",
    "SyncPhase",
    "SyncProgress",
    "SyncRunner",
    "SyncStopReason",
    "SyncStreams",
    "SyncSummary",
    "SyncTarget",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
    "discover_collections",
    "handler_for_task",
]
