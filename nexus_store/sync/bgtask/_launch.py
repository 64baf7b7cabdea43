"""When a pending BGTask request launches: its conditions and the launch policies (pure, no I/O).

A :class:`LaunchPolicy` is a pure function of the request, the time, the device state and
a usage estimate (BG-14):

- :class:`DeterministicLaunchPolicy` launches exactly at ``earliest_begin`` (or at once)
  whenever the request's conditions hold: the policy for tests and for servers.
- :class:`OpportunisticLaunchPolicy` is an iOS-like heuristic (see its docstring).

:func:`plan_launches` applies one to every pending request. Times are clock seconds since
the epoch, as :meth:`nexus_store.Clock.now` returns them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..device._device import DeviceState
from ._requests import USAGE_WINDOW, BGTaskRequest, ProcessingRequest, RequestKind

__all__ = [
    "AppUsage",
    "DeterministicLaunchPolicy",
    "LaunchContext",
    "LaunchDecision",
    "LaunchPlan",
    "LaunchPolicy",
    "OpportunisticLaunchPolicy",
    "has_external_power",
    "plan_launches",
    "unmet_conditions",
]


def has_external_power(device: DeviceState) -> bool:
    """Whether the device is on external power (charging, or has no battery at all)."""
    return device.charging or device.battery_percent is None


def unmet_conditions(request: BGTaskRequest, device: DeviceState) -> list[str]:
    """Name every condition of ``request`` the device does not meet now (empty: all met).

    Background refresh must be on for app-refresh and processing tasks; processing tasks
    also need an idle device (BG-9) and, if asked, a network and external power (BG-2).
    Continued-processing tasks have no device conditions.
    """
    if request.kind is RequestKind.CONTINUED_PROCESSING:
        return []
    unmet: list[str] = []
    if not device.background_refresh_enabled:
        unmet.append("background refresh is off for the app")
    if isinstance(request, ProcessingRequest):
        if not device.idle:
            unmet.append("the device is in use (processing tasks run only while idle)")
        if request.requires_network and not device.connected:
            unmet.append("no network connection")
        if request.requires_external_power and not has_external_power(device):
            unmet.append("not on external power")
    return unmet


@dataclass(frozen=True)
class AppUsage:
    """What the scheduler knows about recent use, for budget-aware policies.

    Attributes:
        launch_times: start times of launches in the last :data:`USAGE_WINDOW`, oldest first.
        app_last_opened: when the user last opened the app (``None``: unknown).
    """

    launch_times: tuple[float, ...] = ()
    app_last_opened: float | None = None


@dataclass(frozen=True)
class LaunchContext:
    """Everything a :class:`LaunchPolicy` may look at."""

    now: float
    device: DeviceState
    usage: AppUsage = AppUsage()


@dataclass(frozen=True)
class LaunchDecision:
    """A policy's answer for one request.

    Attributes:
        at: the earliest time the request may launch (launch now if ``at <= now``);
            ``None``: not while the device state stays as it is.
        reason: why, in words (the "why is it not running" answer).
    """

    at: float | None
    reason: str


@runtime_checkable
class LaunchPolicy(Protocol):
    """Decides when a pending request launches (BG-14). Must be pure and cheap."""

    def decide(self, request: BGTaskRequest, context: LaunchContext) -> LaunchDecision:
        """When ``request`` may launch, given the time, the device and recent usage."""
        ...


def _begin(request: BGTaskRequest, now: float) -> float:
    return now if request.earliest_begin is None else float(request.earliest_begin)


class DeterministicLaunchPolicy:
    """Launch exactly at ``earliest_begin`` (at once if None) when the conditions hold (BG-14).

    No budget, battery or usage heuristics: what tests, servers and desktops want.
    """

    def decide(self, request: BGTaskRequest, context: LaunchContext) -> LaunchDecision:
        """Launch at ``earliest_begin`` unless a condition of the request is unmet."""
        unmet = unmet_conditions(request, context.device)
        if unmet:
            return LaunchDecision(None, "; ".join(unmet))
        at = _begin(request, context.now)
        if at > context.now:
            return LaunchDecision(at, "waiting for earliest_begin")
        return LaunchDecision(at, "due")

    def __repr__(self) -> str:
        return "DeterministicLaunchPolicy()"


class OpportunisticLaunchPolicy:
    """An iOS-like heuristic built from the factors Apple names (WWDC 2020, BG-14).

    A request waits (``at=None``) while any of these holds, and is re-decided when the
    device state changes:

    - one of its own conditions is unmet (background refresh off, processing not idle...);
    - the battery is at or under ``critical_battery_percent`` and not charging;
    - Low Power Mode is on and the device is not charging;
    - the battery is low and not charging (the deferral lasts until it charges);
    - for processing tasks: the user has not opened the app within ``app_usage_window``.

    Otherwise it launches at the latest of ``earliest_begin``, ``min_spacing`` after the
    app's last launch (rate limiting), and, once ``daily_budget`` launches happened in the
    last 24 h, the moment the oldest of them leaves that window (the system budget).

    Args:
        daily_budget: launches allowed per rolling 24 h, for the whole app.
        min_spacing: seconds between two launches of the app.
        critical_battery_percent: under this (and not charging) nothing launches.
        app_usage_window: processing tasks need the app opened within this many seconds
            (Apple: "as long as the user has used your app within the past week").
    """

    def __init__(
        self,
        *,
        daily_budget: int = 48,
        min_spacing: float = 15 * 60.0,
        critical_battery_percent: float = 10.0,
        app_usage_window: float = 7 * 24 * 3600.0,
    ) -> None:
        if daily_budget < 1:
            raise ValueError("daily_budget must be at least 1")
        if min_spacing < 0 or app_usage_window <= 0:
            raise ValueError("min_spacing must be >= 0 and app_usage_window > 0")
        self.daily_budget = daily_budget
        self.min_spacing = float(min_spacing)
        self.critical_battery_percent = float(critical_battery_percent)
        self.app_usage_window = float(app_usage_window)

    def decide(self, request: BGTaskRequest, context: LaunchContext) -> LaunchDecision:
        """Apply the deferrals above, then the spacing and budget bounds."""
        device, now, usage = context.device, context.now, context.usage
        unmet = unmet_conditions(request, device)
        if unmet:
            return LaunchDecision(None, "; ".join(unmet))
        powered = has_external_power(device)
        battery = device.battery_percent
        if not powered and battery is not None and battery <= self.critical_battery_percent:
            return LaunchDecision(None, "battery critically low")
        if not powered and device.low_power_mode:
            return LaunchDecision(None, "Low Power Mode is on")
        if not powered and device.battery_low:
            return LaunchDecision(None, "battery low")
        if (
            request.kind is RequestKind.PROCESSING
            and usage.app_last_opened is not None
            and now - usage.app_last_opened > self.app_usage_window
        ):
            return LaunchDecision(None, "the app was not used recently")
        at, reason = _begin(request, now), "waiting for earliest_begin"
        recent = sorted(t for t in usage.launch_times if now - t < USAGE_WINDOW)
        if recent and recent[-1] + self.min_spacing > at:
            at, reason = recent[-1] + self.min_spacing, "rate limited after the last launch"
        if len(recent) >= self.daily_budget:
            frees = recent[len(recent) - self.daily_budget] + USAGE_WINDOW
            if frees > at:
                at, reason = frees, "daily budget used up"
        return LaunchDecision(at, "due" if at <= now else reason)

    def __repr__(self) -> str:
        return (
            f"OpportunisticLaunchPolicy(daily_budget={self.daily_budget}, "
            f"min_spacing={self.min_spacing})"
        )


@dataclass(frozen=True)
class LaunchPlan:
    """What to launch now and when to look again.

    Attributes:
        due: requests to launch now, in the order given.
        next_at: the earliest future time a request may become due (``None``: none).
        waiting_on_device: some request waits for a device state change.
        reasons: per identifier, why it is not launching now.
    """

    due: tuple[BGTaskRequest, ...]
    next_at: float | None
    waiting_on_device: bool
    reasons: Mapping[str, str]


def plan_launches(
    pending: Sequence[BGTaskRequest],
    context: LaunchContext,
    policy: LaunchPolicy,
    *,
    blocked: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Ask ``policy`` about every app-refresh and processing request.

    Whatever the policy answers, no request becomes due before its ``earliest_begin``
    (BG-5). Continued-processing requests are not planned here: they start as soon as a
    slot is free (BG-15).

    Args:
        pending: the pending requests, in submission order.
        context: the time, device state and usage.
        policy: the launch policy.
        blocked: identifiers that cannot launch now and why (already running, no handler).
    """
    blocked = blocked or {}
    due: list[BGTaskRequest] = []
    reasons: dict[str, str] = {}
    next_at: float | None = None
    waiting = False
    for request in pending:
        if request.kind is RequestKind.CONTINUED_PROCESSING:
            continue
        if request.identifier in blocked:
            reasons[request.identifier] = blocked[request.identifier]
            continue
        decision = policy.decide(request, context)
        if decision.at is None:
            waiting = True
            reasons[request.identifier] = decision.reason
            continue
        at = max(decision.at, _begin(request, decision.at))  # BG-5 even for a careless policy
        if at <= context.now:
            due.append(request)
        else:
            reasons[request.identifier] = decision.reason
            next_at = at if next_at is None else min(next_at, at)
    return LaunchPlan(tuple(due), next_at, waiting, reasons)
