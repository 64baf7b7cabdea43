"""Constraints a piece of work waits for, and the scheduling policy that clamps its timing.

:class:`Constraints` (network, battery, charging, storage) and :class:`SchedulingPolicy`:
Android's floors by default (WM-1, WM-2), or a desktop's lower periodic floor chosen
explicitly (:meth:`SchedulingPolicy.desktop`). The limits are androidx's.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..._exceptions import InvalidWorkRequestError
from ..device._device import DeviceState, NetworkType
from ._states import DispatchOrder, StopReason

__all__ = [
    "DEFAULT_BACKOFF_DELAY_SECONDS",
    "DEFAULT_EXECUTION_TIME_LIMIT_SECONDS",
    "MAX_BACKOFF_DELAY_SECONDS",
    "MIN_BACKOFF_DELAY_SECONDS",
    "MIN_PERIODIC_FLEX_SECONDS",
    "MIN_PERIODIC_INTERVAL_SECONDS",
    "Constraints",
    "SchedulingPolicy",
    "clamp_backoff_delay",
    "clamp_periodic",
]

MIN_PERIODIC_INTERVAL_SECONDS = 15 * 60.0
"""androidx ``PeriodicWorkRequest.MIN_PERIODIC_INTERVAL_MILLIS`` (WM-1)."""
MIN_PERIODIC_FLEX_SECONDS = 5 * 60.0
"""androidx ``PeriodicWorkRequest.MIN_PERIODIC_FLEX_MILLIS`` (WM-2)."""
MIN_BACKOFF_DELAY_SECONDS = 10.0
MAX_BACKOFF_DELAY_SECONDS = 5 * 3600.0
DEFAULT_BACKOFF_DELAY_SECONDS = 30.0
DEFAULT_EXECUTION_TIME_LIMIT_SECONDS = 10 * 60.0
logger = logging.getLogger("nexus_store.sync.work")


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = _finite_seconds(value, what)
    if seconds < 0:
        raise InvalidWorkRequestError(f"{what} must be a finite, non-negative duration")
    return seconds


def _finite_seconds(value: timedelta | float, what: str) -> float:
    """A duration in seconds, negative ones included (the clamps below raise them).

    Raises:
        InvalidWorkRequestError: the value is not a finite number (nothing to clamp).
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds):
        raise InvalidWorkRequestError(f"{what} must be a finite duration")
    return seconds


class Constraints(BaseModel):
    """What must hold on the device for work to run (WM-11, WM-13).

    ``content_uri_triggers`` exists so that building expedited work with content triggers
    is refused as androidx does (WM-14); nothing here watches content URIs, so they never
    hold back a run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    required_network_type: NetworkType = NetworkType.NOT_REQUIRED
    requires_charging: bool = False
    requires_battery_not_low: bool = False
    requires_storage_not_low: bool = False
    requires_device_idle: bool = False
    content_uri_triggers: tuple[str, ...] = ()

    @property
    def has_any(self) -> bool:
        """Whether any constraint is set."""
        return self != _NO_CONSTRAINTS

    def unmet(self, state: DeviceState | None) -> tuple[StopReason, ...]:
        """The stop reason of every constraint ``state`` does not meet, most important first.

        ``state=None`` (the device could not be read) meets no constraint.
        """
        if not self.has_any:
            return ()
        if state is None:
            return (StopReason.DEVICE_STATE,)
        unmet: list[StopReason] = []
        if not state.satisfies_network(self.required_network_type):
            unmet.append(StopReason.CONSTRAINT_CONNECTIVITY)
        if self.requires_charging and not state.charging:
            unmet.append(StopReason.CONSTRAINT_CHARGING)
        if self.requires_battery_not_low and state.battery_low:
            unmet.append(StopReason.CONSTRAINT_BATTERY_NOT_LOW)
        if self.requires_storage_not_low and state.storage_low:
            unmet.append(StopReason.CONSTRAINT_STORAGE_NOT_LOW)
        if self.requires_device_idle and not state.idle:
            unmet.append(StopReason.CONSTRAINT_DEVICE_IDLE)
        return tuple(unmet)


_NO_CONSTRAINTS = Constraints()


class SchedulingPolicy(BaseModel):
    """Tunables of the scheduler; the defaults are androidx's (``SchedulingPolicy.android()``).

    Attributes:
        min_periodic_interval: the periodic floor (WM-1). Lower it only through
            :meth:`desktop` or explicitly; the runtime logs a lowered floor.
        min_periodic_flex: the flex floor (WM-2); at most ``min_periodic_interval``.
        dispatch_order: strict FIFO (WM-21) or priority order.
        max_concurrent_workers: runs at the same time.
        expedited_slots: extra slots only expedited work may use, so it starts at once.
        execution_time_limit: default limit of one run (WM-12).
        expedited_quota: expedited requests granted per ``expedited_quota_window`` (WM-14).
        expedited_quota_window: the sliding window of that quota.
        device_poll_interval: how often device state is re-read when the provider has no
            change notifications and some work waits on (or runs under) constraints.
        max_idle_sleep: the longest the dispatcher sleeps without looking at the clock again
            (catches wall-clock changes; an idle manager wakes this rarely).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_periodic_interval: timedelta = timedelta(seconds=MIN_PERIODIC_INTERVAL_SECONDS)
    min_periodic_flex: timedelta = timedelta(seconds=MIN_PERIODIC_FLEX_SECONDS)
    dispatch_order: DispatchOrder = DispatchOrder.FIFO
    max_concurrent_workers: int = Field(default=4, ge=1)
    expedited_slots: int = Field(default=1, ge=0)
    execution_time_limit: timedelta = timedelta(seconds=DEFAULT_EXECUTION_TIME_LIMIT_SECONDS)
    expedited_quota: int = Field(default=20, ge=0)
    expedited_quota_window: timedelta = timedelta(minutes=10)
    device_poll_interval: timedelta = timedelta(seconds=30)
    max_idle_sleep: timedelta = timedelta(minutes=5)

    @model_validator(mode="after")
    def _check(self) -> SchedulingPolicy:
        for name in (
            "min_periodic_interval",
            "min_periodic_flex",
            "execution_time_limit",
            "expedited_quota_window",
            "device_poll_interval",
            "max_idle_sleep",
        ):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.min_periodic_flex > self.min_periodic_interval:
            raise ValueError("min_periodic_flex must not exceed min_periodic_interval")
        return self

    @classmethod
    def android(cls, **overrides: Any) -> SchedulingPolicy:
        """androidx behaviour: 15-minute periodic floor, strict FIFO."""
        return cls(**overrides)

    @classmethod
    def desktop(
        cls, min_periodic_interval: timedelta | float = 60.0, **overrides: Any
    ) -> SchedulingPolicy:
        """A desktop/server policy: the periodic floor lowered explicitly (default 1 minute).

        The flex floor becomes a third of the periodic floor (as 5 min is to 15 min),
        at most 5 minutes.
        """
        floor = _seconds(min_periodic_interval, "min_periodic_interval")
        if floor <= 0:
            raise ValueError("min_periodic_interval must be positive")
        flex = min(MIN_PERIODIC_FLEX_SECONDS, floor / 3)
        settings: dict[str, Any] = {
            "min_periodic_interval": timedelta(seconds=floor),
            "min_periodic_flex": timedelta(seconds=flex),
        }
        return cls(**{**settings, **overrides})

    @property
    def lowers_periodic_floor(self) -> bool:
        """Whether this policy allows periods under androidx's 15 minutes."""
        return self.min_periodic_interval.total_seconds() < MIN_PERIODIC_INTERVAL_SECONDS


# -- clamping -----------------------------------------------------------------------------------


def clamp_periodic(
    interval: float,
    flex: float | None,
    *,
    min_interval: float = MIN_PERIODIC_INTERVAL_SECONDS,
    min_flex: float = MIN_PERIODIC_FLEX_SECONDS,
) -> tuple[float, float]:
    """Clamp a periodic schedule as androidx ``WorkSpec.setPeriodic`` does (WM-1, WM-2).

    The interval is raised to ``min_interval`` (a negative one too: out-of-range values are
    clamped, not refused); the flex (``None``: the interval) is clamped into
    ``[min_flex, interval]``. Each change is logged as a warning.

    Returns:
        ``(interval, flex)`` in seconds.
    """
    if interval < min_interval:
        logger.warning(
            "Interval duration lesser than minimum allowed value; changed to %ss",
            min_interval,
        )
        interval = min_interval
    if flex is None:
        return interval, interval
    if flex < min_flex:
        logger.warning("Flex duration lesser than minimum allowed value; changed to %ss", min_flex)
        flex = min_flex
    if flex > interval:
        logger.warning("Flex duration greater than interval duration; changed to %ss", interval)
        flex = interval
    return interval, flex


def clamp_backoff_delay(delay: float) -> float:
    """Clamp a backoff delay into [10 s, 5 h], logging a warning when it changes (WM-3).

    A negative delay is out of range like any other short one: it becomes 10 s.
    """
    if delay > MAX_BACKOFF_DELAY_SECONDS:
        logger.warning(
            "Backoff delay greater than maximum; changed to %ss", MAX_BACKOFF_DELAY_SECONDS
        )
        return MAX_BACKOFF_DELAY_SECONDS
    if delay < MIN_BACKOFF_DELAY_SECONDS:
        logger.warning(
            "Backoff delay lesser than minimum; changed to %ss", MIN_BACKOFF_DELAY_SECONDS
        )
        return MIN_BACKOFF_DELAY_SECONDS
    return delay
