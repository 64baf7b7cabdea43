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
    "LaunchContext",
    "LaunchDecision",
    "LaunchPolicy",
    "LaunchRecord",
    "NetworkType",
    "OpportunisticLaunchPolicy",
    "ProcessingRequest",
    "RequestKind",
    "SimulatedDevice",
    "SubmissionStrategy",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
    "handler_for_task",
]
