"""Moving data and deciding when: the sync engine and the background sync service."""

from __future__ import annotations

from ._device import DeviceState, DeviceStateProvider, NetworkType, SimulatedDevice
from ._task import BackgroundSyncTask, TaskContext, TaskOutcome, TaskResult

__all__ = [
    "BackgroundSyncTask",
    "DeviceState",
    "DeviceStateProvider",
    "NetworkType",
    "SimulatedDevice",
    "TaskContext",
    "TaskOutcome",
    "TaskResult",
]
