"""BGTaskScheduler-like requests, their limits, and when they may launch (pure, no I/O).

The request kinds mirror iOS's BackgroundTasks framework (``specs/scheduling.md`` BG-2,
BG-15): :class:`AppRefreshRequest` (short, no options), :class:`ProcessingRequest`
(minutes, optionally needs a network and/or external power, runs only while the device is
idle) and :class:`ContinuedProcessingRequest` (started from the foreground, identified by
a wildcard identifier, starts now or is queued).

*When* a pending request launches is decided by a :class:`LaunchPolicy`, a pure function of
the request, the time, the device state and a usage estimate (BG-14):

- :class:`DeterministicLaunchPolicy` launches exactly at ``earliest_begin`` (or at once)
  whenever the request's conditions hold: the policy for tests and for servers.
- :class:`OpportunisticLaunchPolicy` is an iOS-like heuristic (see its docstring).

Times are clock seconds since the epoch, as :meth:`nexus_store.Clock.now` returns them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, TypeAlias, runtime_checkable

from ..._exceptions import InvalidWorkRequestError, TooManyPendingTaskRequestsError
from ..device._device import DeviceState

__all__ = [
    "DEFAULT_EXPIRATION_LEAD",
    "DEFAULT_PROCESSING_BUDGET",
    "DEFAULT_REFRESH_BUDGET",
    "MAX_PENDING_APP_REFRESH",
    "MAX_PENDING_PROCESSING",
    "USAGE_WINDOW",
    "AppRefreshRequest",
    "AppUsage",
    "BGTaskRequest",
    "ContinuedProcessingRequest",
    "DeterministicLaunchPolicy",
    "LaunchContext",
    "LaunchDecision",
    "LaunchPlan",
    "LaunchPolicy",
    "OpportunisticLaunchPolicy",
    "ProcessingRequest",
    "RequestKind",
    "SubmissionStrategy",
    "check_pending_limits",
    "copy_request",
    "handler_key",
    "has_external_power",
    "plan_launches",
    "request_from_dict",
    "request_to_dict",
    "unmet_conditions",
    "validate_identifiers",
    "validate_request",
]

MAX_PENDING_APP_REFRESH = 1
"""At most one pending app-refresh request (BG-3)."""
MAX_PENDING_PROCESSING = 10
"""At most ten pending processing requests (BG-3)."""
DEFAULT_REFRESH_BUDGET = 30.0
"""Seconds an app-refresh launch may run (BG-7; iOS: "up to 30 seconds")."""
DEFAULT_PROCESSING_BUDGET = 300.0
"""Seconds a processing launch may run (BG-7; iOS says "minutes", we assume five)."""
DEFAULT_EXPIRATION_LEAD = 5.0
"""How long before the end of the budget the expiration handler fires (BG-7)."""
USAGE_WINDOW = 24 * 3600.0
"""The window :class:`AppUsage` counts launches over (the daily budget)."""

_MAX_IDENTIFIER = 255
_WILDCARD = ".*"


class RequestKind(StrEnum):
    """The kind of a background task request."""

    APP_REFRESH = "app_refresh"
    PROCESSING = "processing"
    CONTINUED_PROCESSING = "continued_processing"


class SubmissionStrategy(StrEnum):
    """What to do with a continued-processing request that cannot start now (BG-15)."""

    QUEUE = "queue"
    """Add it to the back of a queue; it starts when it can (the default)."""
    FAIL = "fail"
    """Refuse the submission with :class:`~nexus_store.ImmediateRunIneligibleError`."""


@dataclass
class AppRefreshRequest:
    """A short task to refresh content (BG-2). It has no options.

    Args:
        identifier: a declared task identifier.
        earliest_begin: the launch never happens before this time (BG-5); ``None``: no delay.
    """

    kind: ClassVar[RequestKind] = RequestKind.APP_REFRESH

    identifier: str
    earliest_begin: float | None = None


@dataclass
class ProcessingRequest:
    """A task that may take minutes; it runs only while the device is idle (BG-2, BG-9).

    Args:
        identifier: a declared task identifier.
        earliest_begin: the launch never happens before this time (BG-5); ``None``: no delay.
        requires_network: launch only while the device has a network connection.
        requires_external_power: launch only while the device is on external power.
    """

    kind: ClassVar[RequestKind] = RequestKind.PROCESSING

    identifier: str
    earliest_begin: float | None = None
    requires_network: bool = False
    requires_external_power: bool = False


@dataclass
class ContinuedProcessingRequest:
    """Work started in the foreground that may continue in the background (BG-15).

    Its identifier must fall under a declared wildcard identifier (``"app.export.*"``
    declared, ``"app.export.job-42"`` submitted). It starts at once, or is queued (or refused,
    with ``strategy=FAIL``) when it cannot; ``earliest_begin`` is ignored, as on iOS.

    Args:
        identifier: a concrete identifier under a declared wildcard identifier.
        title: shown to the user while the task runs.
        subtitle: shown under the title.
        strategy: queue (default) or fail when the task cannot start now.
        earliest_begin: accepted and ignored.
    """

    kind: ClassVar[RequestKind] = RequestKind.CONTINUED_PROCESSING

    identifier: str
    title: str = ""
    subtitle: str = ""
    strategy: SubmissionStrategy = SubmissionStrategy.QUEUE
    earliest_begin: float | None = field(default=None)

    def __post_init__(self) -> None:
        # Accept the strategy's value too (requests are read back from JSON).
        self.strategy = SubmissionStrategy(self.strategy)


BGTaskRequest: TypeAlias = AppRefreshRequest | ProcessingRequest | ContinuedProcessingRequest
"""Any background task request."""

_KINDS: Mapping[RequestKind, type[BGTaskRequest]] = {
    RequestKind.APP_REFRESH: AppRefreshRequest,
    RequestKind.PROCESSING: ProcessingRequest,
    RequestKind.CONTINUED_PROCESSING: ContinuedProcessingRequest,
}


def copy_request(request: BGTaskRequest) -> BGTaskRequest:
    """A copy of ``request`` whose mutation does not affect the original (BG-11)."""
    return dataclasses.replace(request)


def request_to_dict(request: BGTaskRequest) -> dict[str, Any]:
    """The request as plain data (``kind`` included), for storage."""
    return {"kind": request.kind.value, **dataclasses.asdict(request)}


def request_from_dict(data: Mapping[str, Any]) -> BGTaskRequest:
    """Rebuild a request from :func:`request_to_dict` output.

    Raises:
        InvalidWorkRequestError: unknown kind or fields.
    """
    body = dict(data)
    try:
        cls = _KINDS[RequestKind(body.pop("kind"))]
        request = cls(**body)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidWorkRequestError(f"not a stored BGTask request: {data!r}") from exc
    validate_request(request)
    return request


def validate_request(request: object) -> BGTaskRequest:
    """Check a request's types and values (it may have been mutated since it was built).

    Raises:
        InvalidWorkRequestError: the request cannot be submitted as it is.
    """
    if not isinstance(request, AppRefreshRequest | ProcessingRequest | ContinuedProcessingRequest):
        raise InvalidWorkRequestError(f"not a BGTask request: {request!r}")
    ident = request.identifier
    if not isinstance(ident, str) or not ident or len(ident) > _MAX_IDENTIFIER:
        raise InvalidWorkRequestError(f"identifier must be a non-empty string, got {ident!r}")
    begin = request.earliest_begin
    if begin is not None and (
        isinstance(begin, bool) or not isinstance(begin, int | float) or not math.isfinite(begin)
    ):
        raise InvalidWorkRequestError(
            f"earliest_begin must be None or clock seconds, got {begin!r}"
        )
    if isinstance(request, ProcessingRequest):
        for name in ("requires_network", "requires_external_power"):
            if not isinstance(getattr(request, name), bool):
                raise InvalidWorkRequestError(f"{name} must be a bool")
    if isinstance(request, ContinuedProcessingRequest):
        if not isinstance(request.title, str) or not isinstance(request.subtitle, str):
            raise InvalidWorkRequestError("title and subtitle must be strings")
        if not isinstance(request.strategy, SubmissionStrategy):
            raise InvalidWorkRequestError(
                f"strategy must be a SubmissionStrategy, got {request.strategy!r}"
            )
    return request


def validate_identifiers(identifiers: Iterable[str]) -> frozenset[str]:
    """Check the declared identifiers (BG-1); wildcards end in ``.*`` after a prefix.

    Raises:
        InvalidWorkRequestError: an identifier is empty, too long or a bare wildcard.
    """
    declared = frozenset(identifiers)
    for ident in declared:
        if not isinstance(ident, str) or not ident or len(ident) > _MAX_IDENTIFIER:
            raise InvalidWorkRequestError(f"task identifier {ident!r} is not a non-empty string")
        if ident.endswith(_WILDCARD) and len(ident) == len(_WILDCARD):
            raise InvalidWorkRequestError("a wildcard identifier needs a prefix, like 'app.job.*'")
    return declared


def handler_key(declared: Collection[str], request: BGTaskRequest) -> str | None:
    """The declared identifier a request runs under, or None if it is not permitted (BG-1).

    App-refresh and processing requests need their exact identifier declared;
    continued-processing requests need a declared wildcard ``prefix.*`` that their
    identifier extends (BG-15).
    """
    ident = request.identifier
    if request.kind is not RequestKind.CONTINUED_PROCESSING:
        if ident in declared and not ident.endswith(_WILDCARD):
            return ident
        return None
    for pattern in declared:
        if pattern.endswith(_WILDCARD):
            prefix = pattern[: -len(_WILDCARD) + 1]  # keep the dot: "app.job."
            if ident.startswith(prefix) and len(ident) > len(prefix) and ident != pattern:
                return pattern
    return None


def check_pending_limits(pending: Iterable[BGTaskRequest], new: BGTaskRequest) -> None:
    """Refuse ``new`` if it would exceed the pending limits (BG-3).

    A request replacing a pending one with the same identifier (BG-4) does not count twice.
    Continued-processing requests have no limit here (they queue, BG-15).

    Raises:
        TooManyPendingTaskRequestsError: one app refresh or ten processing requests pending.
    """
    limits = {
        RequestKind.APP_REFRESH: MAX_PENDING_APP_REFRESH,
        RequestKind.PROCESSING: MAX_PENDING_PROCESSING,
    }
    limit = limits.get(new.kind)
    if limit is None:
        return
    same_kind = sum(1 for p in pending if p.kind is new.kind and p.identifier != new.identifier)
    if same_kind + 1 > limit:
        raise TooManyPendingTaskRequestsError(
            f"{same_kind} {new.kind.value} request(s) already pending (limit {limit}): "
            "cancel some before submitting another"
        )


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
