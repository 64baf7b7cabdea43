"""How the background sync service is configured, and what it reports.

The names follow the reference API: ``BackgroundSyncConfig(enabled, min_interval,
requires_network, requires_charging, requires_battery_not_low)``, plus the options a
WorkManager-like scheduler offers (network type, storage, idle, backoff, time limit).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .device._device import DeviceState, NetworkType

__all__ = [
    "MIN_PERIODIC_INTERVAL",
    "BackgroundSyncConfig",
    "BackgroundSyncStatus",
    "ScheduleResult",
    "ServiceState",
    "unmet_constraints",
]

MIN_PERIODIC_INTERVAL = timedelta(minutes=15)
"""The Android floor for periodic work (WM-1); the default policy."""

logger = logging.getLogger("nexus_store.sync.work")


class BackgroundSyncStatus(StrEnum):
    """What the background sync service is doing."""

    IDLE = "idle"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ScheduleResult(StrEnum):
    """The answer to a scheduling request."""

    ACCEPTED = "accepted"
    REJECTED_OS_POLICY = "rejected_os_policy"
    """The platform refused (background execution disabled, limits reached...)."""
    UNSUPPORTED = "unsupported"
    """This platform has no background execution (the no-op adapter)."""


class BackgroundSyncConfig(BaseModel):
    """Configuration of the background sync service.

    Attributes:
        enabled: when False the factory returns the no-op adapter.
        min_interval: period of the scheduled (periodic) run that sends ``NORMAL`` ops.
            Clamped up to ``min_periodic_floor`` (15 minutes by default, as on Android),
            with a logged warning (WM-1); a negative interval is clamped the same way.
        min_periodic_floor: the lowest allowed ``min_interval``. Lowering it is the
            documented desktop/server policy (e.g. ``timedelta(seconds=30)`` for a daemon);
            it is never lowered silently.
        requires_network: run only with a network (of ``network_type``).
        network_type: which network counts (any connection, unmetered, not roaming...).
        requires_charging: run only while charging.
        requires_battery_not_low: do not run on low battery.
        requires_storage_not_low: do not run while free storage is low.
        requires_device_idle: run only while the device is idle.
        max_attempts: an op failing this many times is dead-lettered.
        backoff_policy: ``"exponential"`` (default) or ``"linear"`` for failed runs.
        backoff_delay: the base delay of that backoff (clamped into [10 s, 5 h] with a
            logged warning, a negative delay too, WM-3).
        execution_time_limit: a run longer than this is stopped and re-enqueued (WM-12).
        high_priority_debounce: how long a ``HIGH`` save waits for more saves before its
            one-time run starts (batches bursts).
        batch_size: ops pushed per request.
        follow_pokes: hold the backend's events stream open while the network allows and
            pull as soon as the server says it has news (a backend without ``watch()``
            has no stream).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    min_interval: timedelta = MIN_PERIODIC_INTERVAL
    min_periodic_floor: timedelta = MIN_PERIODIC_INTERVAL
    requires_network: bool = True
    network_type: NetworkType = NetworkType.CONNECTED
    requires_charging: bool = False
    requires_battery_not_low: bool = False
    requires_storage_not_low: bool = False
    requires_device_idle: bool = False
    max_attempts: int = Field(default=10, ge=1)
    backoff_policy: Literal["exponential", "linear"] = "exponential"
    backoff_delay: timedelta = timedelta(seconds=30)
    execution_time_limit: timedelta = timedelta(minutes=10)
    high_priority_debounce: timedelta = timedelta(seconds=2)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    follow_pokes: bool = True

    @model_validator(mode="after")
    def _check(self) -> BackgroundSyncConfig:
        if self.min_periodic_floor <= timedelta(0):
            raise ValueError("min_periodic_floor must be positive")
        if self.execution_time_limit <= timedelta(0):
            raise ValueError("execution_time_limit must be positive")
        if self.high_priority_debounce < timedelta(0):
            raise ValueError("high_priority_debounce must not be negative")
        if self.min_interval < self.min_periodic_floor:
            # WM-1: clamped, not refused, and said so (androidx logs the same words).
            logger.warning(
                "Interval duration lesser than minimum allowed value; changed to %ss "
                "(min_interval %ss is below min_periodic_floor)",
                self.min_periodic_floor.total_seconds(),
                self.min_interval.total_seconds(),
            )
        return self

    @property
    def effective_network_type(self) -> NetworkType:
        """The network requirement once ``requires_network`` is taken into account."""
        if not self.requires_network:
            return NetworkType.NOT_REQUIRED
        if self.network_type is NetworkType.NOT_REQUIRED:
            return NetworkType.CONNECTED
        return self.network_type

    @property
    def effective_interval(self) -> timedelta:
        """``min_interval`` clamped up to the floor (WM-1)."""
        return max(self.min_interval, self.min_periodic_floor)


def unmet_constraints(config: BackgroundSyncConfig, state: DeviceState) -> list[str]:
    """Name every constraint of ``config`` that ``state`` does not meet (empty: all met).

    This is the answer to "why is it not running?" as far as the device is concerned.
    """
    unmet: list[str] = []
    network = config.effective_network_type
    if not state.satisfies_network(network):
        unmet.append(f"network: requires {network.value}")
    if config.requires_charging and not state.charging:
        unmet.append("charging: the device is not charging")
    if config.requires_battery_not_low and state.battery_low:
        unmet.append("battery: the battery is low")
    if config.requires_storage_not_low and state.storage_low:
        unmet.append("storage: free storage is low")
    if config.requires_device_idle and not state.idle:
        unmet.append("idle: the device is in use")
    return unmet


class ServiceState(StrEnum):
    """The lifecycle of a :class:`BackgroundSyncService`."""

    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"
