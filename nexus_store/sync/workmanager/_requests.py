"""Work requests and the pure rules of the WorkManager-like scheduler (no I/O).

This module holds what a piece of work *is* (:class:`WorkRequest`, built and validated by
:class:`OneTimeWorkRequestBuilder` / :class:`PeriodicWorkRequestBuilder`), what it looks like
from outside (:class:`WorkInfo`), and every decision the runtime takes, as functions of a
:class:`WorkSpec` and the time: clamping (WM-1..WM-3), backoff (WM-4), the next run time
(WM-6..WM-8, androidx ``WorkSpec.calculateNextRunTime``), state transitions after a result or
a stop (WM-5, WM-9, WM-11), readiness and dispatch order (WM-21).

Times are seconds since the epoch (``Clock.now()``); durations are seconds (builders also
accept :class:`~datetime.timedelta`). "Never" is ``math.inf``.

Departures from androidx, chosen on purpose:

- The 15-minute periodic floor is the default :class:`SchedulingPolicy`;
  :meth:`SchedulingPolicy.desktop` lowers it explicitly (and the runtime logs that it did).
- :attr:`DispatchOrder.FIFO` is strict WorkManager order; :attr:`DispatchOrder.PRIORITY`
  orders eligible work by expedited first, then :class:`~nexus_store.SyncPriority`, then FIFO.
- An exception raised by a worker is a ``failure`` result, for periodic work too (so periodic
  work never ends FAILED, WM-9).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import timedelta
from enum import IntEnum, StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from ..._codec import encode
from ..._exceptions import InvalidWorkRequestError, WorkDataTooLargeError
from ..._priority import SyncPriority
from .._task import BackgroundSyncTask, TaskOutcome
from ..device._device import DeviceState, NetworkType

__all__ = [
    "DEFAULT_BACKOFF_DELAY_SECONDS",
    "DEFAULT_EXECUTION_TIME_LIMIT_SECONDS",
    "MAX_BACKOFF_DELAY_SECONDS",
    "MAX_DATA_BYTES",
    "MIN_BACKOFF_DELAY_SECONDS",
    "MIN_PERIODIC_FLEX_SECONDS",
    "MIN_PERIODIC_INTERVAL_SECONDS",
    "BackoffPolicy",
    "Constraints",
    "DispatchOrder",
    "DispatchPlan",
    "ExistingPeriodicWorkPolicy",
    "ExistingWorkPolicy",
    "OneTimeWorkRequestBuilder",
    "OutOfQuotaPolicy",
    "PeriodicWorkRequestBuilder",
    "Readiness",
    "ReleaseFlags",
    "RunOutcome",
    "RunRecord",
    "SchedulingPolicy",
    "StopReason",
    "UpdateResult",
    "WorkInfo",
    "WorkQuery",
    "WorkRequest",
    "WorkSpec",
    "WorkState",
    "after_cancel",
    "after_failure",
    "after_retry",
    "after_stop",
    "after_success",
    "assess",
    "backoff_delay",
    "check_data_size",
    "clamp_backoff_delay",
    "clamp_periodic",
    "dispatch_key",
    "end_of_run",
    "initial_state",
    "is_unfinished",
    "next_run_time",
    "next_schedule_time",
    "plan_dispatch",
    "recovered_after_crash",
]

logger = logging.getLogger("nexus_store.sync.work")

MIN_PERIODIC_INTERVAL_SECONDS = 15 * 60.0
"""androidx ``PeriodicWorkRequest.MIN_PERIODIC_INTERVAL_MILLIS`` (WM-1)."""
MIN_PERIODIC_FLEX_SECONDS = 5 * 60.0
"""androidx ``PeriodicWorkRequest.MIN_PERIODIC_FLEX_MILLIS`` (WM-2)."""
MIN_BACKOFF_DELAY_SECONDS = 10.0
MAX_BACKOFF_DELAY_SECONDS = 5 * 3600.0
DEFAULT_BACKOFF_DELAY_SECONDS = 30.0
DEFAULT_EXECUTION_TIME_LIMIT_SECONDS = 10 * 60.0
MAX_DATA_BYTES = 10 * 1024
"""androidx ``Data.MAX_DATA_BYTES``: the encoded size limit of input, output and progress."""


# -- enums ---------------------------------------------------------------------------------


class WorkState(StrEnum):
    """Where a piece of work is in its life (androidx ``WorkInfo.State``)."""

    ENQUEUED = "enqueued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """SUCCEEDED, FAILED and CANCELLED are final."""
        return self in _FINISHED


_FINISHED = frozenset({WorkState.SUCCEEDED, WorkState.FAILED, WorkState.CANCELLED})
_UNFINISHED = frozenset({WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})


class BackoffPolicy(StrEnum):
    """How the delay grows between retries (WM-4)."""

    EXPONENTIAL = "exponential"
    LINEAR = "linear"


class StopReason(IntEnum):
    """Why a running worker was stopped (androidx ``WorkInfo.STOP_REASON_*`` codes)."""

    NOT_STOPPED = -256
    UNKNOWN = -512
    FOREGROUND_SERVICE_TIMEOUT = -128
    CANCELLED_BY_APP = 1
    PREEMPT = 2
    TIMEOUT = 3
    DEVICE_STATE = 4
    CONSTRAINT_BATTERY_NOT_LOW = 5
    CONSTRAINT_CHARGING = 6
    CONSTRAINT_CONNECTIVITY = 7
    CONSTRAINT_DEVICE_IDLE = 8
    CONSTRAINT_STORAGE_NOT_LOW = 9
    QUOTA = 10
    BACKGROUND_RESTRICTION = 11
    APP_STANDBY = 12
    USER = 13
    SYSTEM_PROCESSING = 14
    ESTIMATED_APP_LAUNCH_TIME_CHANGED = 15


class ExistingWorkPolicy(StrEnum):
    """What unique one-time work does when work with the same name exists (WM-16)."""

    KEEP = "keep"
    REPLACE = "replace"
    APPEND = "append"
    APPEND_OR_REPLACE = "append_or_replace"


class ExistingPeriodicWorkPolicy(StrEnum):
    """What unique periodic work does when work with the same name exists (WM-17)."""

    KEEP = "keep"
    UPDATE = "update"
    CANCEL_AND_REENQUEUE = "cancel_and_reenqueue"


class OutOfQuotaPolicy(StrEnum):
    """What expedited work becomes when the expedited quota is used up (WM-14)."""

    RUN_AS_NON_EXPEDITED = "run_as_non_expedited"
    DROP = "drop"


class DispatchOrder(StrEnum):
    """The order in which eligible work starts (WM-21)."""

    FIFO = "fifo"
    """Strict WorkManager: by last enqueue time, then insertion order."""
    PRIORITY = "priority"
    """Expedited first, then by priority (CRITICAL first), then FIFO."""


class UpdateResult(StrEnum):
    """The answer of an in-place update (androidx ``WorkManager.UpdateResult``)."""

    NOT_APPLIED = "not_applied"
    APPLIED_IMMEDIATELY = "applied_immediately"
    APPLIED_FOR_NEXT_RUN = "applied_for_next_run"


class RunOutcome(StrEnum):
    """How one run ended, as recorded in the run history."""

    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    STOPPED = "stopped"
    """The scheduler stopped it (constraint lost, time limit, shutdown); it runs again."""
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """The process ended during the run (found open after a restart)."""


# -- constraints and policy ----------------------------------------------------------------


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

    Args:
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


# -- requests ------------------------------------------------------------------------------


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidWorkRequestError(f"{what} must be a finite, non-negative duration")
    return seconds


def check_data_size(data: Mapping[str, Any], what: str) -> bytes:
    """Encode ``data`` and refuse it above :data:`MAX_DATA_BYTES` (WM-20).

    Returns:
        The encoded bytes (what is stored).

    Raises:
        WorkDataTooLargeError: if the encoded data is larger than 10 KB.
        CodecError: if the data cannot be encoded.
    """
    if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
        raise InvalidWorkRequestError(f"{what} must be a mapping with string keys")
    blob = encode(dict(data))
    if len(blob) > MAX_DATA_BYTES:
        raise WorkDataTooLargeError(
            f"{what} data is {len(blob)} bytes encoded; the limit is {MAX_DATA_BYTES}"
        )
    return blob


@dataclasses.dataclass(frozen=True, slots=True)
class WorkRequest:
    """A validated request for work; build it with a builder, hand it to the manager.

    ``interval`` is ``None`` for one-time work. ``tags`` always holds ``worker_name``
    (WM-18). ``execution_time_limit=None`` means the manager policy's limit.
    """

    id: str
    worker_name: str
    tags: frozenset[str]
    input: dict[str, Any]
    constraints: Constraints
    initial_delay: float
    backoff_policy: BackoffPolicy
    backoff_delay: float
    backoff_on_system_interruptions: bool
    expedited: bool
    out_of_quota_policy: OutOfQuotaPolicy | None
    priority: SyncPriority
    execution_time_limit: float | None
    interval: float | None = None
    flex: float | None = None

    @property
    def is_periodic(self) -> bool:
        """Whether this is periodic work."""
        return self.interval is not None


class _WorkRequestBuilder:
    """What one-time and periodic builders share (androidx ``WorkRequest.Builder``)."""

    def __init__(self, worker: str | BackgroundSyncTask) -> None:
        name = worker if isinstance(worker, str) else worker.task_id
        if not isinstance(name, str) or not name:
            raise InvalidWorkRequestError("a work request needs a worker name")
        self._worker_name = name
        self._id: str | None = None
        self._tags: set[str] = {name}
        self._input: dict[str, Any] = {}
        self._constraints = _NO_CONSTRAINTS
        self._initial_delay = 0.0
        self._backoff_policy = BackoffPolicy.EXPONENTIAL
        self._backoff_delay = DEFAULT_BACKOFF_DELAY_SECONDS
        self._backoff_set = False
        self._backoff_on_system = False
        self._out_of_quota: OutOfQuotaPolicy | None = None
        self._priority = SyncPriority.NORMAL
        self._time_limit: float | None = None

    def set_id(self, work_id: str | uuid.UUID) -> Self:
        """Use this id instead of a fresh UUID (e.g. to update work in place)."""
        self._id = str(work_id)
        return self

    def add_tag(self, tag: str) -> Self:
        """Add a tag to query or cancel the work by (WM-18)."""
        if not isinstance(tag, str) or not tag:
            raise InvalidWorkRequestError("a tag must be a non-empty string")
        self._tags.add(tag)
        return self

    def set_input_data(self, data: Mapping[str, Any]) -> Self:
        """Data the worker reads from ``context.input``.

        Raises:
            WorkDataTooLargeError: above 10 KB encoded (WM-20).
        """
        check_data_size(data, "input")
        self._input = dict(data)
        return self

    def set_constraints(self, constraints: Constraints) -> Self:
        """Device conditions that must hold for the work to run."""
        self._constraints = constraints
        return self

    def set_initial_delay(self, delay: timedelta | float) -> Self:
        """Wait this long after enqueueing before the first run (WM-6, WM-7)."""
        self._initial_delay = _seconds(delay, "initial delay")
        return self

    def set_backoff_criteria(self, policy: BackoffPolicy, delay: timedelta | float) -> Self:
        """Backoff after a ``retry``; the delay is clamped into [10 s, 5 h] (WM-3)."""
        self._backoff_policy = BackoffPolicy(policy)
        self._backoff_delay = clamp_backoff_delay(_seconds(delay, "backoff delay"))
        self._backoff_set = True
        return self

    def set_backoff_for_system_interruptions(self) -> Self:
        """Also back off when the system stops the worker (timeout, constraint lost; WM-11)."""
        self._backoff_on_system = True
        return self

    def set_expedited(self, policy: OutOfQuotaPolicy) -> Self:
        """Run as soon as possible, within the expedited quota (WM-14)."""
        self._out_of_quota = OutOfQuotaPolicy(policy)
        return self

    def set_priority(self, priority: SyncPriority | int | str) -> Self:
        """The priority used by :attr:`DispatchOrder.PRIORITY` (ignored in FIFO order)."""
        self._priority = SyncPriority.coerce(priority)
        return self

    def set_execution_time_limit(self, limit: timedelta | float) -> Self:
        """Stop a run after this long (default: the manager policy's, 10 minutes; WM-12)."""
        seconds = _seconds(limit, "execution time limit")
        if seconds <= 0:
            raise InvalidWorkRequestError("the execution time limit must be positive")
        self._time_limit = seconds
        return self

    def _validate(self) -> None:
        constraints = self._constraints
        if self._backoff_set and constraints.requires_device_idle:
            raise InvalidWorkRequestError("Cannot set backoff criteria on an idle mode job")
        if self._out_of_quota is not None:
            if self._initial_delay > 0:
                raise InvalidWorkRequestError("Expedited jobs cannot be delayed")
            if (
                constraints.requires_charging
                or constraints.requires_battery_not_low
                or constraints.requires_device_idle
                or constraints.content_uri_triggers
            ):
                raise InvalidWorkRequestError(
                    "Expedited jobs only support network and storage constraints"
                )

    def _build(self, interval: float | None, flex: float | None) -> WorkRequest:
        self._validate()
        return WorkRequest(
            id=self._id or str(uuid.uuid4()),
            worker_name=self._worker_name,
            tags=frozenset(self._tags),
            input=dict(self._input),
            constraints=self._constraints,
            initial_delay=self._initial_delay,
            backoff_policy=self._backoff_policy,
            backoff_delay=self._backoff_delay,
            backoff_on_system_interruptions=self._backoff_on_system,
            expedited=self._out_of_quota is not None,
            out_of_quota_policy=self._out_of_quota,
            priority=self._priority,
            execution_time_limit=self._time_limit,
            interval=interval,
            flex=flex,
        )


class OneTimeWorkRequestBuilder(_WorkRequestBuilder):
    """Builds one-time work: ``OneTimeWorkRequestBuilder("cleanup").set_initial_delay(60).build()``.

    Raises (from :meth:`build`):
        InvalidWorkRequestError: expedited with a delay or with charging/battery/idle/content
            constraints (WM-14); backoff criteria with device idle (WM-15).
    """

    def build(self) -> WorkRequest:
        """The validated request."""
        return self._build(None, None)


class PeriodicWorkRequestBuilder(_WorkRequestBuilder):
    """Builds periodic work; interval and flex are clamped, not refused (WM-1, WM-2).

    Args:
        worker: the worker (or its name).
        interval: the repeat interval; raised to the policy floor (15 min by default)
            with a logged warning.
        flex_interval: the window at the end of each interval in which the run may happen;
            clamped into [flex floor, interval]; ``None`` means the whole interval.
        policy: the policy whose floors apply (``SchedulingPolicy.android()`` by default).
    """

    def __init__(
        self,
        worker: str | BackgroundSyncTask,
        interval: timedelta | float,
        flex_interval: timedelta | float | None = None,
        *,
        policy: SchedulingPolicy | None = None,
    ) -> None:
        super().__init__(worker)
        self._interval = _seconds(interval, "interval")
        self._flex = None if flex_interval is None else _seconds(flex_interval, "flex interval")
        self._policy = policy or _ANDROID

    def build(self) -> WorkRequest:
        """The validated, clamped request.

        Raises:
            InvalidWorkRequestError: periodic work cannot be expedited (WM-14); backoff
                criteria with device idle (WM-15).
        """
        if self._out_of_quota is not None:
            raise InvalidWorkRequestError("PeriodicWorkRequests cannot be expedited")
        interval, flex = clamp_periodic(
            self._interval,
            self._flex,
            min_interval=self._policy.min_periodic_interval.total_seconds(),
            min_flex=self._policy.min_periodic_flex.total_seconds(),
        )
        return self._build(interval, flex)


_ANDROID = SchedulingPolicy()


# -- clamping and timing -------------------------------------------------------------------


def clamp_periodic(
    interval: float,
    flex: float | None,
    *,
    min_interval: float = MIN_PERIODIC_INTERVAL_SECONDS,
    min_flex: float = MIN_PERIODIC_FLEX_SECONDS,
) -> tuple[float, float]:
    """Clamp a periodic schedule as androidx ``WorkSpec.setPeriodic`` does (WM-1, WM-2).

    The interval is raised to ``min_interval``; the flex (``None``: the interval) is clamped
    into ``[min_flex, interval]``. Each change is logged as a warning.

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
    """Clamp a backoff delay into [10 s, 5 h], logging a warning when it changes (WM-3)."""
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


def backoff_delay(policy: BackoffPolicy, delay: float, run_attempt_count: int) -> float:
    """The wait after the ``run_attempt_count``-th consecutive retry (WM-4), capped at 5 h.

    LINEAR: ``delay * n``; EXPONENTIAL: ``delay * 2 ** (n - 1)``.
    """
    n = max(1, run_attempt_count)
    if policy is BackoffPolicy.LINEAR:
        wait = delay * n
    else:
        # 2**64 times any delay is past the cap; math.ldexp would overflow further out.
        wait = MAX_BACKOFF_DELAY_SECONDS if n > 64 else math.ldexp(delay, n - 1)
    return min(MAX_BACKOFF_DELAY_SECONDS, wait)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkSpec:
    """A request plus its persisted scheduling state (one row of ``nx_work``)."""

    request: WorkRequest
    state: WorkState
    last_enqueue_time: float
    """When the work was last (re)enqueued: enqueue, retry, periodic completion, unblock."""
    run_attempt_count: int = 0
    period_count: int = 0
    generation: int = 0
    stop_reason: StopReason = StopReason.NOT_STOPPED
    output: dict[str, Any] = dataclasses.field(default_factory=dict)
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    unique_name: str | None = None
    seq: int = 0
    """Insertion order, the FIFO tie-break (assigned by the store)."""
    enqueued_at: float = 0.0
    """When the request was first enqueued."""

    @property
    def id(self) -> str:
        """The work id."""
        return self.request.id

    @property
    def is_backed_off(self) -> bool:
        """ENQUEUED after at least one run: the backoff formula decides (androidx)."""
        return self.state is WorkState.ENQUEUED and self.run_attempt_count > 0


def next_run_time(spec: WorkSpec) -> float:
    """When ``spec`` may next run, as androidx ``WorkSpec.calculateNextRunTime`` (WM-4, 6-8).

    Backed off: ``last_enqueue + backoff``. Periodic: the first period at
    ``last_enqueue + initial_delay (+ interval - flex when a flex is set)``; later periods at
    ``last_enqueue + interval`` (last_enqueue is the previous completion). One-time:
    ``last_enqueue + initial_delay``.
    """
    request = spec.request
    if spec.is_backed_off:
        return spec.last_enqueue_time + backoff_delay(
            request.backoff_policy, request.backoff_delay, spec.run_attempt_count
        )
    if request.interval is not None:
        if spec.period_count == 0:
            when = spec.last_enqueue_time + request.initial_delay
            flex = request.flex if request.flex is not None else request.interval
            if flex != request.interval:
                # Flex applies to the first run only, so later periods are not pushed back.
                when += request.interval - flex
            return when
        return spec.last_enqueue_time + request.interval
    return spec.last_enqueue_time + request.initial_delay


def next_schedule_time(spec: WorkSpec) -> float:
    """What :class:`WorkInfo` reports: the next run time while ENQUEUED, else infinity."""
    return next_run_time(spec) if spec.state is WorkState.ENQUEUED else math.inf


# -- transitions ---------------------------------------------------------------------------


def _reset_periodic(spec: WorkSpec, now: float) -> WorkSpec:
    # The next period is measured from now (androidx resetPeriodic): no catch-up (WM-7).
    return dataclasses.replace(
        spec,
        state=WorkState.ENQUEUED,
        last_enqueue_time=now,
        run_attempt_count=0,
        period_count=spec.period_count + 1,
        stop_reason=StopReason.NOT_STOPPED,
        progress={},
    )


def after_success(spec: WorkSpec, now: float, output: Mapping[str, Any]) -> WorkSpec:
    """A ``success`` result: one-time work SUCCEEDED with output; periodic re-enqueued (WM-9)."""
    if spec.request.is_periodic:
        return _reset_periodic(spec, now)
    return dataclasses.replace(
        spec,
        state=WorkState.SUCCEEDED,
        output=dict(output),
        progress={},
        stop_reason=StopReason.NOT_STOPPED,
    )


def after_failure(spec: WorkSpec, now: float, output: Mapping[str, Any]) -> WorkSpec:
    """A ``failure`` result: one-time work FAILED with output; periodic re-enqueued (WM-9)."""
    if spec.request.is_periodic:
        return _reset_periodic(spec, now)
    return dataclasses.replace(
        spec,
        state=WorkState.FAILED,
        output=dict(output),
        progress={},
        stop_reason=StopReason.NOT_STOPPED,
    )


def after_retry(spec: WorkSpec, now: float) -> WorkSpec:
    """A ``retry`` result: ENQUEUED, backed off from now (WM-4); the attempt count stays."""
    return dataclasses.replace(
        spec,
        state=WorkState.ENQUEUED,
        last_enqueue_time=now,
        stop_reason=StopReason.NOT_STOPPED,
        progress={},
    )


def after_stop(spec: WorkSpec, reason: StopReason, now: float) -> WorkSpec:
    """The system stopped a run (WM-11, WM-12): back to ENQUEUED with ``reason``.

    Without ``backoff_on_system_interruptions`` the last enqueue time is kept, so the
    backoff formula counts from the old time and the work is usually eligible again at
    once (androidx ``resetWorkerStatus``); with it, the retry path applies.
    """
    if spec.request.backoff_on_system_interruptions:
        return dataclasses.replace(after_retry(spec, now), stop_reason=reason)
    return dataclasses.replace(spec, state=WorkState.ENQUEUED, stop_reason=reason, progress={})


def after_cancel(spec: WorkSpec) -> WorkSpec:
    """Cancelled (WM-10, WM-16): CANCELLED; stop reason CANCELLED_BY_APP if it was running."""
    reason = StopReason.CANCELLED_BY_APP if spec.state is WorkState.RUNNING else spec.stop_reason
    return dataclasses.replace(spec, state=WorkState.CANCELLED, stop_reason=reason, progress={})


def end_of_run(
    current: WorkSpec | None,
    now: float,
    *,
    stop: StopReason | None,
    outcome: TaskOutcome | None,
    output: Mapping[str, Any],
) -> tuple[WorkSpec | None, RunOutcome, StopReason | None]:
    """What the end of a run does to its work.

    Args:
        current: the work as stored now (``None``: it is gone).
        now: the time the run ended.
        stop: why the scheduler stopped the run, if it did (the result is then ignored).
        outcome: the worker's result; ``None`` when it raised (a failure, WM-10).
        output: the worker's output data.

    Returns:
        The new spec (``None``: leave the stored one alone), the run's outcome for the
        history, and its stop reason.
    """
    if current is None or current.state.is_finished:
        # Cancelled or replaced while running: the result is ignored (androidx no-op).
        return None, RunOutcome.CANCELLED, stop or StopReason.CANCELLED_BY_APP
    if current.state is not WorkState.RUNNING:
        return None, RunOutcome.STOPPED, stop or StopReason.UNKNOWN
    if stop is not None:
        return after_stop(current, stop, now), RunOutcome.STOPPED, stop
    if outcome is TaskOutcome.SUCCESS:
        return after_success(current, now, output), RunOutcome.SUCCESS, None
    if outcome is TaskOutcome.RETRY:
        return after_retry(current, now), RunOutcome.RETRY, None
    return after_failure(current, now, output), RunOutcome.FAILURE, None


def recovered_after_crash(spec: WorkSpec) -> WorkSpec:
    """A RUNNING row found at startup: ENQUEUED again, stop reason UNKNOWN (WM-22)."""
    return dataclasses.replace(
        spec, state=WorkState.ENQUEUED, stop_reason=StopReason.UNKNOWN, progress={}
    )


# -- readiness and dispatch ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseFlags:
    """Test-driver overrides for one work id (WM-23); cleared when the work starts."""

    constraints_met: bool = False
    initial_delay_met: bool = False
    period_delay_met: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    """Whether ENQUEUED work may start now, and if not, what it waits for."""

    due: bool
    """The time gate is open."""
    wake_at: float | None
    """When the clock opens the time gate (None: open, or only a test driver opens it)."""
    unmet: tuple[StopReason, ...]
    """Constraints not met now."""
    waiting_for: str
    """Human-readable answer to "why is it not running?" (empty when ready)."""

    @property
    def ready(self) -> bool:
        """Due and every constraint met."""
        return self.due and not self.unmet


def assess(
    spec: WorkSpec,
    now: float,
    device: DeviceState | None,
    *,
    flags: ReleaseFlags | None = None,
    manual_time: bool = False,
) -> Readiness:
    """Decide whether ENQUEUED ``spec`` may start at ``now`` on ``device``.

    Args:
        spec: the work.
        now: the current time.
        device: the device state (``None``: unreadable, no constraint is met).
        flags: test-driver overrides for this work.
        manual_time: the test driver's manual mode (WM-23): initial and period delays are
            released only by the driver, backoff still by the clock, and constraints only by
            ``set_all_constraints_met`` (the device is not consulted).
    """
    if spec.state is not WorkState.ENQUEUED:
        return Readiness(False, None, (), f"state is {spec.state.value}")
    flags = flags or ReleaseFlags()
    due_at = next_run_time(spec)
    request = spec.request
    if manual_time and not spec.is_backed_off:
        first = spec.period_count == 0 and spec.run_attempt_count == 0
        if first:
            due = request.initial_delay == 0 or flags.initial_delay_met
            waiting = "" if due else "initial delay (test driver: set_initial_delay_met)"
        elif request.is_periodic:
            due = flags.period_delay_met
            waiting = "" if due else "period delay (test driver: set_period_delay_met)"
        else:
            due, waiting = True, ""
        wake_at = None
    else:
        due = due_at <= now
        wake_at = None if due else due_at
        waiting = "" if due else f"{'backoff' if spec.is_backed_off else 'delay'} until {due_at}"
    if flags.constraints_met or not request.constraints.has_any:
        unmet: tuple[StopReason, ...] = ()
    elif manual_time:
        unmet = (StopReason.DEVICE_STATE,)
    else:
        unmet = request.constraints.unmet(device)
    if unmet:
        names = ", ".join(reason.name.lower() for reason in unmet)
        waiting = f"{waiting}; constraints unmet: {names}" if waiting else f"constraints: {names}"
    return Readiness(due, wake_at, unmet, waiting)


def dispatch_key(spec: WorkSpec, order: DispatchOrder) -> tuple[float, ...]:
    """Sort key of eligible work: FIFO by last enqueue time (WM-21), or priority first."""
    fifo = (spec.last_enqueue_time, float(spec.seq))
    if order is DispatchOrder.PRIORITY:
        return (0.0 if spec.request.expedited else 1.0, float(spec.request.priority), *fifo)
    return fifo


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchPlan:
    """What one dispatcher pass does: which work starts, and when to look again."""

    start: tuple[tuple[WorkSpec, bool], ...]
    """Work to start, each with whether it takes an expedited slot."""
    wake_at: float | None
    """The earliest time a waiting piece of work becomes due by the clock."""
    waiting_on_device: bool
    """Some due work waits only for constraints (poll if the device cannot notify)."""


def plan_dispatch(
    candidates: Iterable[WorkSpec],
    now: float,
    device: DeviceState | None,
    *,
    registered: Collection[str],
    running: int,
    running_expedited: int,
    policy: SchedulingPolicy,
    flags: Mapping[str, ReleaseFlags] | None = None,
    manual_time: bool = False,
) -> DispatchPlan:
    """Choose the ENQUEUED work to start now, in dispatch order, within the worker slots.

    Work whose worker is not registered waits (registration wakes the dispatcher).
    """
    flags = flags or {}
    ready: list[WorkSpec] = []
    wake_at: float | None = None
    waiting_on_device = False
    for spec in candidates:
        if spec.request.worker_name not in registered:
            continue
        readiness = assess(spec, now, device, flags=flags.get(spec.id), manual_time=manual_time)
        if readiness.ready:
            ready.append(spec)
            continue
        if readiness.wake_at is not None:
            wake_at = readiness.wake_at if wake_at is None else min(wake_at, readiness.wake_at)
        elif readiness.due and readiness.unmet:
            waiting_on_device = True
    ready.sort(key=lambda spec: dispatch_key(spec, policy.dispatch_order))
    start: list[tuple[WorkSpec, bool]] = []
    for spec in ready:
        if running < policy.max_concurrent_workers:
            running += 1
            start.append((spec, False))
        elif spec.request.expedited and running_expedited < policy.expedited_slots:
            running_expedited += 1
            start.append((spec, True))
    return DispatchPlan(tuple(start), wake_at, waiting_on_device)


def initial_state(prerequisite_states: Iterable[WorkState | None]) -> WorkState:
    """The state of new work from its prerequisites' states (androidx EnqueueRunnable).

    A FAILED prerequisite makes it FAILED, else a CANCELLED one CANCELLED; all SUCCEEDED
    (or gone: ``None``) makes it ENQUEUED; otherwise it is BLOCKED.
    """
    states = [state or WorkState.SUCCEEDED for state in prerequisite_states]
    if WorkState.FAILED in states:
        return WorkState.FAILED
    if WorkState.CANCELLED in states:
        return WorkState.CANCELLED
    if all(state is WorkState.SUCCEEDED for state in states):
        return WorkState.ENQUEUED
    return WorkState.BLOCKED


def is_unfinished(state: WorkState) -> bool:
    """ENQUEUED, RUNNING or BLOCKED (what KEEP looks for, WM-16)."""
    return state in _UNFINISHED


# -- what callers see ----------------------------------------------------------------------


class WorkInfo(BaseModel):
    """A snapshot of one piece of work (WM-19).

    ``output`` is empty unless the work finished; ``progress`` is empty unless RUNNING;
    ``next_schedule_time`` is infinite unless ENQUEUED. Durations are in seconds.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    worker_name: str
    state: WorkState
    tags: frozenset[str]
    unique_name: str | None
    output: dict[str, Any]
    progress: dict[str, Any]
    run_attempt_count: int
    period_count: int
    generation: int
    next_schedule_time: float
    stop_reason: StopReason
    constraints: Constraints
    initial_delay: float
    interval: float | None
    flex: float | None
    expedited: bool
    priority: SyncPriority

    @field_serializer("tags")
    def _sorted_tags(self, tags: frozenset[str]) -> list[str]:
        return sorted(tags)  # stable output for logs, JSON and the CLI

    @classmethod
    def from_spec(cls, spec: WorkSpec) -> WorkInfo:
        """The snapshot of ``spec``."""
        request = spec.request
        return cls(
            id=request.id,
            worker_name=request.worker_name,
            state=spec.state,
            tags=request.tags,
            unique_name=spec.unique_name,
            output=dict(spec.output) if spec.state.is_finished else {},
            progress=dict(spec.progress) if spec.state is WorkState.RUNNING else {},
            run_attempt_count=spec.run_attempt_count,
            period_count=spec.period_count,
            generation=spec.generation,
            next_schedule_time=next_schedule_time(spec),
            stop_reason=spec.stop_reason,
            constraints=request.constraints,
            initial_delay=request.initial_delay,
            interval=request.interval,
            flex=request.flex,
            expedited=request.expedited,
            priority=request.priority,
        )

    @property
    def is_periodic(self) -> bool:
        """Whether this is periodic work."""
        return self.interval is not None


class WorkQuery(BaseModel):
    """Select work: components combine with AND, values within one component with OR (WM-18).

    An empty component does not filter; an empty query selects all work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    unique_names: frozenset[str] = frozenset()
    states: frozenset[WorkState] = frozenset()

    def matches(self, info: WorkInfo) -> bool:
        """Whether the work ``info`` describes is selected."""
        return (
            (not self.ids or info.id in self.ids)
            and (not self.tags or not self.tags.isdisjoint(info.tags))
            and (not self.unique_names or info.unique_name in self.unique_names)
            and (not self.states or info.state in self.states)
        )


class RunRecord(BaseModel):
    """One run of one piece of work, from the persisted run history."""

    model_config = ConfigDict(frozen=True)

    run_id: int
    work_id: str
    worker_name: str
    attempt: int
    """The run attempt count the worker saw (0 on the first execution)."""
    expedited: bool
    started_at: float
    ended_at: float | None
    duration: float | None
    outcome: RunOutcome | None
    """``None`` while the run is in progress."""
    stop_reason: StopReason | None
    error: str | None
