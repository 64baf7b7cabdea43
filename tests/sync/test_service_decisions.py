"""The background sync service's decisions, as pure functions of plain inputs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import SyncPriority
from nexus_store.sync import (
    BackgroundSyncConfig,
    BackgroundSyncStatus,
    NetworkType,
    SyncStopReason,
    SyncSummary,
    TaskOutcome,
)
from nexus_store.sync._decisions import (
    format_time,
    plan_requests,
    run_budget,
    status_after,
    sync_outcome,
)
from nexus_store.sync.bgtask._adapter import launch_budget
from nexus_store.sync.workmanager import WorkState
from nexus_store.sync.workmanager._adapter import (
    constraints_for,
    critical_request,
    high_request,
    periodic_request,
    policy_for,
    work_ended,
)
from nexus_store.sync.workmanager._states import DispatchOrder, StopReason

C, H, N, L = SyncPriority.CRITICAL, SyncPriority.HIGH, SyncPriority.NORMAL, SyncPriority.LOW
NOW = 1_700_000_000.0


def summary(**fields: object) -> SyncSummary:
    return SyncSummary.model_validate(
        {"run_id": "r", "started_at": datetime(2024, 1, 1, tzinfo=UTC), "duration": 1.0, **fields}
    )


# -- which run to ask for ----------------------------------------------------------------------


def test_plan_requests_asks_for_critical_first() -> None:
    """An eligible CRITICAL op asks for a CRITICAL run even with HIGH ones eligible too."""
    plan = plan_requests(NOW, {C: NOW - 5, H: NOW - 9})
    assert (plan.request, plan.wake_at) == (C, None)


def test_plan_requests_high_and_future_eligibility() -> None:
    """HIGH is asked for when no CRITICAL is eligible; a future CRITICAL sets the wake time."""
    plan = plan_requests(NOW, {C: NOW + 30, H: NOW})
    assert (plan.request, plan.wake_at) == (H, NOW + 30)
    assert plan_requests(NOW, {C: None, H: None}) == plan_requests(NOW, {})


def test_plan_requests_ignores_normal_and_low() -> None:
    """NORMAL and LOW ops never ask for a run of their own: they wait for the periodic run."""
    plan = plan_requests(NOW, {N: NOW - 100, L: NOW - 100})
    assert (plan.request, plan.wake_at) == (None, None)


def test_plan_requests_skips_stale_priorities() -> None:
    """The loop guard: priorities the last run could not send are not asked for again."""
    assert plan_requests(NOW, {C: NOW}, stale=frozenset({C, H})).request is None
    assert plan_requests(NOW, {C: NOW, H: NOW}, stale=frozenset({C})).request is H


times = st.one_of(st.none(), st.floats(NOW - 1e6, NOW + 1e6))


@given(critical=times, high=times, stale=st.frozensets(st.sampled_from([C, H])))
def test_plan_requests_properties(
    critical: float | None, high: float | None, stale: frozenset[SyncPriority]
) -> None:
    """A request names an eligible, non-stale priority; the wake time is the earliest future."""
    plan = plan_requests(NOW, {C: critical, H: high}, stale=stale)
    eligible = [
        p for p, t in ((C, critical), (H, high)) if t is not None and t <= NOW and p not in stale
    ]
    assert plan.request == (eligible[0] if eligible else None)
    future = [t for t in (critical, high) if t is not None and t > NOW]
    assert plan.wake_at == (min(future) if future else None)


# -- what a run's summary means ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "outcome", "status"),
    [
        ({"pushed": 3}, TaskOutcome.SUCCESS, BackgroundSyncStatus.COMPLETED),
        (
            {"stop_reason": SyncStopReason.BUDGET},
            TaskOutcome.SUCCESS,
            BackgroundSyncStatus.COMPLETED,
        ),
        ({"dead_lettered": 1}, TaskOutcome.SUCCESS, BackgroundSyncStatus.FAILED),
        ({"failed": 2}, TaskOutcome.RETRY, BackgroundSyncStatus.FAILED),
        ({"stop_reason": SyncStopReason.OFFLINE}, TaskOutcome.RETRY, BackgroundSyncStatus.FAILED),
        ({"stop_reason": SyncStopReason.FAILURES}, TaskOutcome.RETRY, BackgroundSyncStatus.FAILED),
        (
            {"stop_reason": SyncStopReason.RATE_LIMITED},
            TaskOutcome.RETRY,
            BackgroundSyncStatus.FAILED,
        ),
        ({"stop_reason": SyncStopReason.CANCELLED}, TaskOutcome.RETRY, BackgroundSyncStatus.FAILED),
        ({"stop_reason": SyncStopReason.ERROR}, TaskOutcome.RETRY, BackgroundSyncStatus.FAILED),
        ({"stop_reason": SyncStopReason.AUTH}, TaskOutcome.FAILURE, BackgroundSyncStatus.FAILED),
    ],
)
def test_summary_to_outcome_and_status(
    fields: dict[str, object], outcome: TaskOutcome, status: BackgroundSyncStatus
) -> None:
    """Transient trouble retries (with backoff), refused credentials fail, the rest succeeds."""
    result = sync_outcome(summary(**fields))
    assert result.outcome is outcome
    assert status_after(summary(**fields)) is status


def test_budgets_end_runs_before_the_limits() -> None:
    """A run's budget is 90 % of the time limit, or of the launch time before expiry."""
    assert run_budget(timedelta(minutes=10)) == pytest.approx(540.0)
    assert launch_budget(30.0, 5.0) == pytest.approx(22.5)
    assert launch_budget(4.0, 5.0) == pytest.approx(1.8)
    assert launch_budget(None, 5.0) is None
    with pytest.raises(ValueError, match="positive"):
        run_budget(0)


def test_format_time() -> None:
    """Clock times print as ISO 8601 UTC; infinity as never."""
    assert format_time(NOW) == "2023-11-14T22:13:20Z"
    assert format_time(math.inf) == "never"


# -- the WorkManager requests a config asks for ------------------------------------------------


def test_requests_follow_the_config() -> None:
    """Periodic work carries the config's constraints, backoff, time limit and interval."""
    config = BackgroundSyncConfig(
        min_interval=timedelta(hours=1),
        network_type=NetworkType.UNMETERED,
        requires_charging=True,
        backoff_policy="linear",
        backoff_delay=timedelta(minutes=2),
        execution_time_limit=timedelta(minutes=3),
    )
    periodic = periodic_request(config, policy_for(config))
    assert periodic.interval == 3600
    assert periodic.constraints.required_network_type is NetworkType.UNMETERED
    assert periodic.constraints.requires_charging
    assert (periodic.backoff_policy.value, periodic.backoff_delay) == ("linear", 120)
    assert periodic.execution_time_limit == 180
    assert policy_for(config).dispatch_order is DispatchOrder.PRIORITY


def test_critical_work_is_expedited_with_network_and_storage_only() -> None:
    """CRITICAL work is expedited, so charging/battery/idle do not hold it back (WM-14)."""
    config = BackgroundSyncConfig(
        requires_charging=True, requires_battery_not_low=True, requires_storage_not_low=True
    )
    request = critical_request(config)
    assert request.expedited
    assert request.priority is C
    assert request.constraints == constraints_for(config, expedited=True)
    assert not request.constraints.requires_charging
    assert request.constraints.requires_storage_not_low
    assert request.constraints.unmet(None) == (StopReason.DEVICE_STATE,)


def test_high_work_waits_the_debounce_and_idle_work_keeps_default_backoff() -> None:
    """HIGH work is delayed by the debounce; device-idle work gets no backoff criteria (WM-15)."""
    config = BackgroundSyncConfig(
        high_priority_debounce=timedelta(seconds=7), requires_device_idle=True
    )
    request = high_request(config)
    assert request.initial_delay == 7
    assert request.constraints.requires_device_idle
    assert request.backoff_delay == 30  # androidx's default, not the config's


def test_lowering_the_floor_is_explicit() -> None:
    """Only a config that lowers min_periodic_floor gets the desktop policy's floor."""
    assert policy_for(BackgroundSyncConfig()).min_periodic_interval == timedelta(minutes=15)
    low = BackgroundSyncConfig(min_periodic_floor=timedelta(seconds=20))
    assert policy_for(low).min_periodic_interval == timedelta(seconds=20)
    assert policy_for(low).lowers_periodic_floor


def test_the_service_looks_again_only_when_sync_work_ended_or_stopped() -> None:
    """New work and work starting are what the service asked for; work gone from the
    unfinished list, or back from RUNNING, is news."""
    enq, run = WorkState.ENQUEUED, WorkState.RUNNING
    assert not work_ended({}, {"p": enq})
    assert not work_ended({"p": enq}, {"p": enq, "c": enq})
    assert not work_ended({"p": enq, "c": enq}, {"p": enq, "c": run})
    assert work_ended({"p": enq, "c": run}, {"p": enq})  # the expedited run ended
    assert work_ended({"p": run}, {"p": enq})  # a periodic run ended (or was stopped)
    assert work_ended({"p": enq, "c": enq}, {"p": enq})  # cancelled before it ran
