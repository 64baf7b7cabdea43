"""The pure rules of the WorkManager-like scheduler: timing, transitions, readiness, order.

Every decision the runtime takes, as functions of a :class:`WorkSpec` and the time (no
I/O): clamping (WM-1..WM-3), backoff (WM-4), the next run time (WM-6..WM-8, androidx
``WorkSpec.calculateNextRunTime``), state transitions after a result or a stop (WM-5,
WM-9, WM-11), readiness and dispatch order (WM-21).

Times are seconds since the epoch (``Clock.now()``); durations are seconds. "Never" is
``math.inf``.

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
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .._task import TaskOutcome
from ..device._device import DeviceState
from ._policy import MAX_BACKOFF_DELAY_SECONDS, SchedulingPolicy
from ._requests import WorkRequest
from ._states import _UNFINISHED, BackoffPolicy, DispatchOrder, RunOutcome, StopReason, WorkState

__all__ = [
    "DispatchPlan",
    "Readiness",
    "ReleaseFlags",
    "WorkSpec",
    "after_cancel",
    "after_failure",
    "after_retry",
    "after_stop",
    "after_success",
    "assess",
    "backoff_delay",
    "dispatch_key",
    "end_of_run",
    "initial_state",
    "is_unfinished",
    "next_run_time",
    "next_schedule_time",
    "plan_dispatch",
    "recovered_after_crash",
]

# -- timing -------------------------------------------------------------------------------------


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
    """What ``WorkInfo`` reports: the next run time while ENQUEUED, else infinity."""
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
