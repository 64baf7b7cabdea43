"""The WorkManager-like scheduler against its statements WM-1..WM-23, after Android's WorkManager.

Each test names the statement it pins. Time is a FakeClock, the device a SimulatedDevice;
nothing sleeps: tests wait on WorkInfo subscriptions, worker events or ``settle()``, each
bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import (
    InvalidWorkRequestError,
    LifecycleError,
    SyncPriority,
    UnknownWorkError,
    WorkDataTooLargeError,
)
from nexus_store._database import Database
from nexus_store.sync import DeviceState, NetworkType, TaskContext, TaskOutcome, TaskResult
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.workmanager._decisions import (
    WorkSpec,
    backoff_delay,
    end_of_run,
    initial_state,
    next_run_time,
    plan_dispatch,
)
from nexus_store.sync.workmanager._persistence import WorkStore
from nexus_store.sync.workmanager._policy import (
    MAX_BACKOFF_DELAY_SECONDS,
    Constraints,
    SchedulingPolicy,
    clamp_periodic,
)
from nexus_store.sync.workmanager._records import WorkInfo, WorkQuery
from nexus_store.sync.workmanager._requests import (
    OneTimeWorkRequestBuilder,
    PeriodicWorkRequestBuilder,
)
from nexus_store.sync.workmanager._states import (
    BackoffPolicy,
    DispatchOrder,
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    RunOutcome,
    StopReason,
    UpdateResult,
    WorkState,
)
from nexus_store.sync.workmanager._workmanager import WorkManager
from nexus_store.testing import FakeClock
from nexus_store.testing._workdriver import WorkDriver

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
HOUR = 3600.0
WORK_LOGGER = "nexus_store.sync.work"


class Job:
    """A registered task whose runs the test scripts and observes."""

    def __init__(self, task_id: str = "job", *, results: Any = (), blocking: bool = False) -> None:
        self.task_id = task_id
        self.results: list[Any] = list(results)
        self.blocking = blocking
        self.attempts: list[int] = []
        self.inputs: list[dict[str, Any]] = []
        self.contexts: list[TaskContext] = []
        self.stopped_calls = 0
        self.cancelled_runs = 0
        self.gate = anyio.Event()
        self._changed = anyio.Event()

    async def execute(self, context: TaskContext) -> bool | TaskResult:
        self.contexts.append(context)
        self.attempts.append(context.run_attempt_count)
        self.inputs.append(dict(context.input))
        gate = self.gate = anyio.Event()
        self._notify()
        if self.blocking:
            try:
                await gate.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled_runs += 1
                raise
        result = self.results.pop(0) if self.results else True
        if isinstance(result, Exception):
            raise result
        return result

    def on_stopped(self) -> None:
        self.stopped_calls += 1

    def release(self, result: Any = None, *, keep_blocking: bool = False) -> None:
        """Let the current run finish (with ``result`` if given)."""
        if result is not None:
            self.results.insert(0, result)
        self.blocking = keep_blocking
        self.gate.set()

    @property
    def runs(self) -> int:
        return len(self.attempts)

    async def wait_runs(self, count: int, seconds: float = 5) -> None:
        with anyio.fail_after(seconds):
            while self.runs < count:
                changed = self._changed
                await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


@asynccontextmanager
async def manager(
    clock: FakeClock,
    device: SimulatedDevice | Any,
    *jobs: Any,
    database: Database | None = None,
    **options: Any,
) -> AsyncIterator[WorkManager]:
    db = database or Database(":memory:")
    async with WorkManager(db, clock=clock, device=device, **options) as wm:
        for job in jobs:
            wm.register(job)
        yield wm
    if database is None:
        db.close()


async def wait_for(
    wm: WorkManager, work_id: str, predicate: Callable[[WorkInfo], bool], seconds: float = 5
) -> WorkInfo:
    """The first snapshot of ``work_id`` (current or later) that satisfies ``predicate``."""
    with anyio.fail_after(seconds):
        async with wm.subscribe(work_id) as watch:
            async for info in watch:
                if predicate(info):
                    return info
    raise AssertionError("the manager closed first")


def state_is(state: WorkState, **fields: Any) -> Callable[[WorkInfo], bool]:
    return lambda info: (
        info.state is state and all(getattr(info, name) == value for name, value in fields.items())
    )


async def settle(target: WorkManager | WorkDriver, seconds: float = 5) -> None:
    """One full dispatcher pass, bounded in time."""
    with anyio.fail_after(seconds):
        await target.settle()


async def info_of(wm: WorkManager, work_id: str) -> WorkInfo:
    info = await wm.get_work_info(work_id)
    assert info is not None
    return info


def one_time(worker: str = "job") -> OneTimeWorkRequestBuilder:
    return OneTimeWorkRequestBuilder(worker)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at a round start time."""
    return FakeClock(start=T0)


@pytest.fixture
def device() -> SimulatedDevice:
    """A connected, charging, unmetered simulated device."""
    return SimulatedDevice()


# -- WM-1..WM-3: clamping ------------------------------------------------------------------


def test_wm01_periodic_interval_clamped_to_15_minutes(caplog: pytest.LogCaptureFixture) -> None:
    """WM-1: a periodic interval under 15 min is clamped to 15 min with a logged warning."""
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        request = PeriodicWorkRequestBuilder("job", timedelta(minutes=5)).build()
    assert request.interval == 900.0
    assert request.flex == 900.0
    assert "Interval duration lesser than minimum allowed value" in caplog.text


async def test_wm01_desktop_policy_lowers_the_floor_explicitly(
    clock: FakeClock, device: SimulatedDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """WM-1 departure: only an explicit desktop policy lowers the floor; the default clamps."""
    desktop = SchedulingPolicy.desktop(timedelta(minutes=1))
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        fast = PeriodicWorkRequestBuilder("job", 60, policy=desktop).build()
    assert fast.interval == 60.0
    assert caplog.text == ""
    with caplog.at_level(logging.INFO):
        async with manager(clock, device, policy=desktop) as wm:
            work_id = await wm.enqueue(fast)
            assert work_id is not None
            assert (await info_of(wm, work_id)).interval == 60.0
        assert "periodic floor lowered to 60.0s" in caplog.text
        caplog.clear()
        async with manager(clock, device) as wm:  # androidx policy: never silently lower
            work_id = await wm.enqueue(fast)
            assert work_id is not None
            assert (await info_of(wm, work_id)).interval == 900.0
        assert "Interval duration lesser than minimum allowed value" in caplog.text


def test_wm02_flex_clamped_into_5_minutes_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    """WM-2: flex < 5 min -> 5 min, flex > interval -> interval, no flex -> interval."""
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        low = PeriodicWorkRequestBuilder("job", HOUR, 60).build()
        high = PeriodicWorkRequestBuilder("job", HOUR, 2 * HOUR).build()
    none = PeriodicWorkRequestBuilder("job", HOUR).build()
    assert (low.interval, low.flex) == (HOUR, 300.0)
    assert (high.interval, high.flex) == (HOUR, HOUR)
    assert (none.interval, none.flex) == (HOUR, HOUR)
    assert "Flex duration lesser than minimum" in caplog.text
    assert "Flex duration greater than interval" in caplog.text


@given(
    interval=st.floats(min_value=0, max_value=10 * HOUR),
    flex=st.none() | st.floats(min_value=0, max_value=20 * HOUR),
)
def test_wm02_clamped_schedule_is_always_valid(interval: float, flex: float | None) -> None:
    """WM-1/WM-2: any input yields interval >= 15 min and 5 min <= flex <= interval."""
    logging.getLogger(WORK_LOGGER).disabled = True
    try:
        new_interval, new_flex = clamp_periodic(interval, flex)
    finally:
        logging.getLogger(WORK_LOGGER).disabled = False
    assert new_interval == max(interval, 900.0)
    assert 300.0 <= new_flex <= new_interval
    if flex is None:
        assert new_flex == new_interval


def test_wm03_backoff_clamped_and_defaults(caplog: pytest.LogCaptureFixture) -> None:
    """WM-3: backoff delay clamped into [10 s, 5 h]; defaults EXPONENTIAL and 30 s."""
    default = OneTimeWorkRequestBuilder("job").build()
    assert default.backoff_policy is BackoffPolicy.EXPONENTIAL
    assert default.backoff_delay == 30.0
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        short = OneTimeWorkRequestBuilder("job").set_backoff_criteria(BackoffPolicy.LINEAR, 1)
        long = OneTimeWorkRequestBuilder("job").set_backoff_criteria(
            BackoffPolicy.EXPONENTIAL, timedelta(hours=6)
        )
    assert short.build().backoff_delay == 10.0
    assert long.build().backoff_delay == 5 * HOUR
    assert "Backoff delay lesser than minimum" in caplog.text
    assert "Backoff delay greater than maximum" in caplog.text


# -- WM-4, WM-5: backoff and attempt counts -----------------------------------------------


@given(
    delay=st.floats(min_value=10, max_value=5 * HOUR),
    attempts=st.integers(min_value=1, max_value=10_000),
    linear=st.booleans(),
)
def test_wm04_backoff_formula(delay: float, attempts: int, linear: bool) -> None:
    """WM-4: LINEAR delay*n, EXPONENTIAL delay*2^(n-1), both capped at 5 h."""
    policy = BackoffPolicy.LINEAR if linear else BackoffPolicy.EXPONENTIAL
    expected = delay * attempts if linear else delay * 2.0 ** min(attempts - 1, 100)
    assert backoff_delay(policy, delay, attempts) == pytest.approx(
        min(MAX_BACKOFF_DELAY_SECONDS, expected)
    )


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (BackoffPolicy.EXPONENTIAL, [30, 60, 120, 240, 480]),
        (BackoffPolicy.LINEAR, [30, 60, 90, 120, 150]),
    ],
)
async def test_wm04_exponential_backoff(
    clock: FakeClock, device: SimulatedDevice, policy: BackoffPolicy, delays: list[float]
) -> None:
    """WM-4: after the n-th retry, next-eligible = retry time + the policy's delay for n."""
    job = Job(results=[TaskResult.retry()] * len(delays))
    async with manager(clock, device, job) as wm:
        request = OneTimeWorkRequestBuilder("job").set_backoff_criteria(policy, 30).build()
        work_id = await wm.enqueue(request)
        assert work_id is not None
        for attempt, delay in enumerate(delays, start=1):
            info = await wait_for(
                wm, work_id, state_is(WorkState.ENQUEUED, run_attempt_count=attempt)
            )
            retried_at = clock.now()
            assert info.next_schedule_time == retried_at + delay
            clock.advance(delay - 1)
            await settle(wm)
            assert (await info_of(wm, work_id)).state is WorkState.ENQUEUED
            clock.advance(1)
            with anyio.fail_after(5):
                await job.wait_runs(attempt + 1)
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
    assert job.attempts == list(range(len(delays) + 1))


async def test_wm04_backoff_caps_at_5_hours(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-4: a long run of retries never waits more than 5 h."""
    job = Job(results=[TaskResult.retry()] * 12)
    async with manager(clock, device, job) as wm:
        request = OneTimeWorkRequestBuilder("job").set_backoff_criteria(
            BackoffPolicy.EXPONENTIAL, HOUR
        )
        work_id = await wm.enqueue(request.build())
        assert work_id is not None
        for attempt in range(1, 6):
            info = await wait_for(
                wm, work_id, state_is(WorkState.ENQUEUED, run_attempt_count=attempt)
            )
            assert info.next_schedule_time - clock.now() == min(5 * HOUR, HOUR * 2 ** (attempt - 1))
            clock.advance(info.next_schedule_time - clock.now())


async def test_wm05_run_attempt_count(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-5: the worker sees 0 first; the stored count rises on RUNNING; periodic resets to 0."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        work_id = await wm.enqueue(OneTimeWorkRequestBuilder("job").build())
        assert work_id is not None
        running = await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        assert running.run_attempt_count == 1
        assert job.attempts == [0]
        job.release(TaskResult.retry(), keep_blocking=True)
        await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, run_attempt_count=1))
        clock.advance(30)
        await wait_for(wm, work_id, state_is(WorkState.RUNNING, run_attempt_count=2))
        assert job.attempts == [0, 1]
        job.release(True)
        done = await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
        assert done.run_attempt_count == 2

        periodic = Job("tick", results=[TaskResult.retry(), True, False, TaskResult.retry(), True])
        wm.register(periodic)
        tick = await wm.enqueue(PeriodicWorkRequestBuilder("tick", HOUR).build())
        assert tick is not None
        await wait_for(wm, tick, state_is(WorkState.ENQUEUED, run_attempt_count=1))
        clock.advance(30)  # the retry's backoff
        after_success = await wait_for(wm, tick, state_is(WorkState.ENQUEUED, period_count=1))
        assert after_success.run_attempt_count == 0
        clock.advance(HOUR)
        after_failure = await wait_for(wm, tick, state_is(WorkState.ENQUEUED, period_count=2))
        assert after_failure.run_attempt_count == 0
        clock.advance(HOUR)
        await wait_for(wm, tick, state_is(WorkState.ENQUEUED, run_attempt_count=1))
        clock.advance(30)
        await wait_for(wm, tick, state_is(WorkState.ENQUEUED, period_count=3))
    assert periodic.attempts == [0, 1, 0, 0, 1]


# -- WM-6..WM-9: timing of one-time and periodic work -------------------------------------


async def test_wm06_one_time_delay_and_constraints(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-6: one-time work is eligible at enqueue + initial delay and once constraints hold."""
    job = Job()
    device.set(charging=False)
    async with manager(clock, device, job) as wm:
        immediate = await wm.enqueue(OneTimeWorkRequestBuilder("job").build())
        assert immediate is not None
        await wait_for(wm, immediate, state_is(WorkState.SUCCEEDED))
        request = (
            OneTimeWorkRequestBuilder("job")
            .set_initial_delay(timedelta(minutes=10))
            .set_constraints(Constraints(requires_charging=True))
            .build()
        )
        work_id = await wm.enqueue(request)
        assert work_id is not None
        assert (await info_of(wm, work_id)).next_schedule_time == T0 + 600
        clock.advance(599)
        await settle(wm)
        assert "delay until" in await wm.why_not_running(work_id)
        clock.advance(1)
        await settle(wm)
        assert (await info_of(wm, work_id)).state is WorkState.ENQUEUED
        assert "constraint_charging" in await wm.why_not_running(work_id)
        assert job.runs == 1
        device.set(charging=True)
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
    assert job.runs == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_wm07_periodic_without_flex(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-7: first run at enqueue + initial delay; later at completion + interval; no catch-up."""
    job = Job("tick", blocking=True)
    async with manager(clock, device, job) as wm:
        request = PeriodicWorkRequestBuilder("tick", HOUR).set_initial_delay(600).build()
        work_id = await wm.enqueue(request)
        assert work_id is not None
        assert (await info_of(wm, work_id)).next_schedule_time == T0 + 600
        clock.advance(599)
        await settle(wm)
        assert job.runs == 0
        clock.advance(1)
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        clock.advance(300)  # the run takes 5 minutes
        job.release(True)
        info = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=1))
        completed = T0 + 900
        assert info.next_schedule_time == completed + HOUR
        clock.advance(3 * HOUR)  # three periods pass while nothing runs
        await job.wait_runs(2)
        info = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=2))
        assert info.next_schedule_time == clock.now() + HOUR
        await settle(wm)
    assert job.runs == 2


async def test_wm08_periodic_with_flex(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-8: flex delays the first run by interval - flex; later runs at completion + interval."""
    job = Job("tick")
    async with manager(clock, device, job) as wm:
        request = (
            PeriodicWorkRequestBuilder("tick", HOUR, timedelta(minutes=15))
            .set_initial_delay(60)
            .build()
        )
        work_id = await wm.enqueue(request)
        assert work_id is not None
        first = T0 + 60 + (HOUR - 900)
        assert (await info_of(wm, work_id)).next_schedule_time == first
        clock.set(first - 1)
        await settle(wm)
        assert job.runs == 0
        clock.set(first)
        info = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=1))
        assert info.next_schedule_time == first + HOUR  # flex is not applied again


async def test_wm09_periodic_never_finishes(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-9: success, failure, exceptions re-enqueue periodic work; retry backs off; cancel ends."""
    job = Job("tick", results=[True, False, RuntimeError("boom"), TaskResult.retry()])
    async with manager(clock, device, job) as wm:
        work_id = await wm.enqueue(PeriodicWorkRequestBuilder("tick", HOUR).build())
        assert work_id is not None
        for period in (1, 2, 3):
            info = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=period))
            assert info.next_schedule_time == clock.now() + HOUR
            clock.advance(HOUR)
        retried = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, run_attempt_count=1))
        assert retried.period_count == 3
        assert retried.next_schedule_time == clock.now() + 30  # backoff, not the interval
        assert await wm.cancel_by_id(work_id) == 1
        cancelled = await info_of(wm, work_id)
        assert cancelled.state is WorkState.CANCELLED
        assert math.isinf(cancelled.next_schedule_time)
        history = await wm.run_history(work_id)
    assert [run.outcome for run in reversed(history)] == [
        RunOutcome.SUCCESS,
        RunOutcome.FAILURE,
        RunOutcome.FAILURE,
        RunOutcome.RETRY,
    ]
    assert history[1].error == "RuntimeError: boom"


# -- WM-10: chains ---------------------------------------------------------------------------


async def test_wm10_success_unblocks_dependents(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-10: success stores output; a BLOCKED dependent runs once all prerequisites succeeded."""
    first = Job("first", blocking=True)
    other = Job("other", blocking=True)
    last = Job("last")
    async with manager(clock, device, first, other, last) as wm:
        a = await wm.enqueue(OneTimeWorkRequestBuilder("first").build())
        b = await wm.enqueue(OneTimeWorkRequestBuilder("other").build())
        assert a is not None
        assert b is not None
        c = await wm.enqueue(OneTimeWorkRequestBuilder("last").build(), depends_on=[a, b])
        assert c is not None
        assert (await info_of(wm, c)).state is WorkState.BLOCKED
        assert math.isinf((await info_of(wm, c)).next_schedule_time)
        await wait_for(wm, a, state_is(WorkState.RUNNING))
        clock.advance(10)
        first.release(TaskResult.success({"rows": 3}))
        done = await wait_for(wm, a, state_is(WorkState.SUCCEEDED))
        assert done.output == {"rows": 3}
        await settle(wm)
        assert (await info_of(wm, c)).state is WorkState.BLOCKED  # b is still running
        other.release(True)
        await wait_for(wm, c, state_is(WorkState.SUCCEEDED))


async def test_wm10_failure_fails_dependents(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-10: failure -> FAILED with output; transitive dependents FAILED except CANCELLED ones."""
    root = Job("root", results=[TaskResult.failure({"why": "bad"})], blocking=True)
    async with manager(clock, device, root, Job("child")) as wm:
        a = await wm.enqueue(OneTimeWorkRequestBuilder("root").build())
        assert a is not None
        b = await wm.enqueue(OneTimeWorkRequestBuilder("child").build(), depends_on=[a])
        assert b is not None
        c = await wm.enqueue(OneTimeWorkRequestBuilder("child").build(), depends_on=[b])
        d = await wm.enqueue(OneTimeWorkRequestBuilder("child").build(), depends_on=[a])
        assert c is not None
        assert d is not None
        await wait_for(wm, a, state_is(WorkState.RUNNING))
        assert await wm.cancel_by_id(d) == 1
        root.release()
        failed = await wait_for(wm, a, state_is(WorkState.FAILED))
        assert failed.output == {"why": "bad"}
        assert (await info_of(wm, b)).state is WorkState.FAILED
        assert (await info_of(wm, c)).state is WorkState.FAILED
        assert (await info_of(wm, d)).state is WorkState.CANCELLED


async def test_wm10_cancel_and_exceptions(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-10: cancel reaches every dependent; a worker exception counts as failure."""
    async with manager(clock, device, Job("root", blocking=True), Job("child")) as wm:
        a = await wm.enqueue(OneTimeWorkRequestBuilder("root").build())
        assert a is not None
        b = await wm.enqueue(OneTimeWorkRequestBuilder("child").build(), depends_on=[a])
        assert b is not None
        c = await wm.enqueue(OneTimeWorkRequestBuilder("child").build(), depends_on=[b])
        assert c is not None
        await wait_for(wm, a, state_is(WorkState.RUNNING))
        assert await wm.cancel_by_id(a) == 3
        for work_id in (a, b, c):
            assert (await info_of(wm, work_id)).state is WorkState.CANCELLED
        assert (await info_of(wm, a)).stop_reason is StopReason.CANCELLED_BY_APP

        wm.register(Job("crash", results=[ValueError("no disk")]))
        crash = await wm.enqueue(OneTimeWorkRequestBuilder("crash").build())
        assert crash is not None
        await wait_for(wm, crash, state_is(WorkState.FAILED))
        [run] = await wm.run_history(crash)
        assert run.outcome is RunOutcome.FAILURE
        assert run.error == "ValueError: no disk"


# -- WM-11..WM-13: constraints, stops, time limit -----------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_wm11_constraint_loss_stops_the_worker(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-11: an unmet constraint blocks start; losing it mid-run stops the worker, no backoff."""
    job = Job(blocking=True)
    device.set(connected=False)
    async with manager(clock, device, job) as wm:
        request = (
            OneTimeWorkRequestBuilder("job")
            .set_constraints(Constraints(required_network_type=NetworkType.CONNECTED))
            .build()
        )
        work_id = await wm.enqueue(request)
        assert work_id is not None
        clock.advance(HOUR)
        await settle(wm)
        assert job.runs == 0
        assert "constraint_connectivity" in await wm.why_not_running(work_id)
        device.set(connected=True)
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        clock.advance(60)
        # The change arrives from another thread, as a real probe's would.
        await anyio.to_thread.run_sync(lambda: device.set(connected=False))
        stopped = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED))
        assert stopped.stop_reason is StopReason.CONSTRAINT_CONNECTIVITY
        assert int(stopped.stop_reason) == 7
        assert job.contexts[0].is_stopped
        assert job.stopped_calls == 1
        assert job.cancelled_runs == 1
        # No backoff added: the old enqueue time counts, so it is due at once.
        assert stopped.next_schedule_time <= clock.now()
        device.set(connected=True)
        await wait_for(wm, work_id, state_is(WorkState.RUNNING, run_attempt_count=2))
        job.release(True)
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
        runs = await wm.run_history(work_id)
    assert [run.outcome for run in reversed(runs)] == [RunOutcome.STOPPED, RunOutcome.SUCCESS]
    assert runs[1].stop_reason is StopReason.CONSTRAINT_CONNECTIVITY


async def test_wm11_backoff_on_system_interruptions(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-11: with backoff_on_system_interruptions a stop backs off from the stop time."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        request = (
            OneTimeWorkRequestBuilder("job")
            .set_constraints(Constraints(requires_charging=True))
            .set_backoff_for_system_interruptions()
            .build()
        )
        work_id = await wm.enqueue(request)
        assert work_id is not None
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        clock.advance(600)
        device.set(charging=False)
        stopped = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED))
        assert stopped.stop_reason is StopReason.CONSTRAINT_CHARGING
        assert stopped.next_schedule_time == clock.now() + 30


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_wm12_execution_time_limit(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-12: a run over 10 minutes is stopped with TIMEOUT (3) and re-enqueued."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        work_id = await wm.enqueue(OneTimeWorkRequestBuilder("job").build())
        assert work_id is not None
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        clock.advance(599)
        await settle(wm)
        assert (await info_of(wm, work_id)).state is WorkState.RUNNING
        clock.advance(1)
        await job.wait_runs(2)  # stopped, re-enqueued, due at once, running again
        assert job.contexts[0].is_stopped
        info = await wait_for(wm, work_id, state_is(WorkState.RUNNING, run_attempt_count=2))
        assert info.stop_reason is StopReason.TIMEOUT
        job.release(True)
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
        runs = await wm.run_history(work_id)
        assert runs[1].stop_reason == 3
        assert runs[1].duration == 600

        custom = Job("short", blocking=True)
        wm.register(custom)
        request = OneTimeWorkRequestBuilder("short").set_execution_time_limit(5).build()
        short = await wm.enqueue(request)
        assert short is not None
        await wait_for(wm, short, state_is(WorkState.RUNNING))
        enqueued_at = clock.now()
        clock.advance(5)
        stopped = await wait_for(wm, short, state_is(WorkState.ENQUEUED))
        assert stopped.stop_reason is StopReason.TIMEOUT
        # androidx keeps the old enqueue time on a stop: the backoff counts from it.
        assert stopped.next_schedule_time == enqueued_at + 30
        clock.advance(25)
        await custom.wait_runs(2)


@pytest.mark.parametrize(
    ("required", "state", "met"),
    [
        (NetworkType.NOT_REQUIRED, DeviceState(connected=False), True),
        (NetworkType.CONNECTED, DeviceState(connected=False), False),
        (NetworkType.CONNECTED, DeviceState(metered=True), True),
        (NetworkType.UNMETERED, DeviceState(metered=True), False),
        (NetworkType.UNMETERED, DeviceState(metered=True, temporarily_unmetered=True), True),
        (NetworkType.NOT_ROAMING, DeviceState(roaming=True), False),
        (NetworkType.NOT_ROAMING, DeviceState(), True),
        (NetworkType.METERED, DeviceState(), False),
        (NetworkType.METERED, DeviceState(metered=True), True),
        (NetworkType.TEMPORARILY_UNMETERED, DeviceState(metered=True), False),
        (NetworkType.TEMPORARILY_UNMETERED, DeviceState(temporarily_unmetered=True), True),
    ],
)
def test_wm13_network_constraint_values(
    required: NetworkType, state: DeviceState, met: bool
) -> None:
    """WM-13: each network requirement against device states."""
    unmet = Constraints(required_network_type=required).unmet(state)
    assert (unmet == ()) is met
    if not met:
        assert unmet == (StopReason.CONSTRAINT_CONNECTIVITY,)


def test_wm13_other_constraints_map_to_stop_reasons() -> None:
    """WM-13: battery, charging, storage and idle constraints each report their stop code."""
    constraints = Constraints(
        requires_charging=True,
        requires_battery_not_low=True,
        requires_storage_not_low=True,
        requires_device_idle=True,
    )
    state = DeviceState(charging=False, battery_low=True, storage_low=True, idle=False)
    assert [int(reason) for reason in constraints.unmet(state)] == [6, 5, 9, 8]
    assert constraints.unmet(DeviceState(idle=True)) == ()
    assert constraints.unmet(None) == (StopReason.DEVICE_STATE,)


class PlainProvider:
    """A device provider with no change notifications (like a polled real probe)."""

    def __init__(self) -> None:
        self.state = DeviceState(metered=True)
        self.reads = 0

    def current(self) -> DeviceState:
        self.reads += 1
        return self.state


async def test_wm13_pluggable_provider_without_notifications(clock: FakeClock) -> None:
    """WM-13: any provider works; without notifications the state is re-read at an interval."""
    provider = PlainProvider()
    job = Job()
    policy = SchedulingPolicy(device_poll_interval=timedelta(seconds=30))
    async with manager(clock, provider, job, policy=policy) as wm:
        request = (
            OneTimeWorkRequestBuilder("job")
            .set_constraints(Constraints(required_network_type=NetworkType.UNMETERED))
            .build()
        )
        work_id = await wm.enqueue(request)
        assert work_id is not None
        await settle(wm)
        assert job.runs == 0
        provider.state = DeviceState(metered=False)
        clock.advance(29)
        await settle(wm)  # settle() itself makes a pass, so the new state is seen here
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))

        second = Job("second", blocking=True)
        wm.register(second)
        provider.state = DeviceState(metered=True)
        request = (
            OneTimeWorkRequestBuilder("second")
            .set_constraints(Constraints(required_network_type=NetworkType.UNMETERED))
            .build()
        )
        other = await wm.enqueue(request)
        assert other is not None
        provider.state = DeviceState(metered=False)
        clock.advance(30)  # the poll timer, not a wake-up, finds the change
        await wait_for(wm, other, state_is(WorkState.RUNNING))
        provider.state = DeviceState(metered=True)
        clock.advance(30)
        stopped = await wait_for(wm, other, state_is(WorkState.ENQUEUED))
        assert stopped.stop_reason is StopReason.CONSTRAINT_CONNECTIVITY
        provider.state = DeviceState(metered=False)
        wm.notify_device_changed()
        await wait_for(wm, other, state_is(WorkState.RUNNING, run_attempt_count=2))
        second.release(True)


# -- WM-14, WM-15: build-time validation and expedited quota ------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: (
            PeriodicWorkRequestBuilder("job", HOUR).set_expedited(OutOfQuotaPolicy.DROP).build()
        ),
        lambda: (
            OneTimeWorkRequestBuilder("job")
            .set_expedited(OutOfQuotaPolicy.DROP)
            .set_initial_delay(1)
            .build()
        ),
        lambda: (
            OneTimeWorkRequestBuilder("job")
            .set_expedited(OutOfQuotaPolicy.DROP)
            .set_constraints(Constraints(requires_charging=True))
            .build()
        ),
        lambda: (
            OneTimeWorkRequestBuilder("job")
            .set_expedited(OutOfQuotaPolicy.DROP)
            .set_constraints(Constraints(requires_battery_not_low=True))
            .build()
        ),
        lambda: (
            OneTimeWorkRequestBuilder("job")
            .set_expedited(OutOfQuotaPolicy.DROP)
            .set_constraints(Constraints(requires_device_idle=True))
            .build()
        ),
        lambda: (
            OneTimeWorkRequestBuilder("job")
            .set_expedited(OutOfQuotaPolicy.DROP)
            .set_constraints(Constraints(content_uri_triggers=("content://media",)))
            .build()
        ),
    ],
    ids=["periodic", "delay", "charging", "battery", "idle", "content-trigger"],
)
def test_wm14_invalid_expedited_requests_raise(build: Callable[[], object]) -> None:
    """WM-14: expedited work cannot be periodic, delayed, or use power/idle/content constraints."""
    with pytest.raises(InvalidWorkRequestError):
        build()


def test_wm14_expedited_allows_network_and_storage() -> None:
    """WM-14: network and storage constraints are fine on expedited work."""
    request = (
        OneTimeWorkRequestBuilder("job")
        .set_expedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED)
        .set_constraints(
            Constraints(required_network_type=NetworkType.CONNECTED, requires_storage_not_low=True)
        )
        .build()
    )
    assert request.expedited


async def test_wm14_expedited_quota(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-14: past the quota RUN_AS_NON_EXPEDITED enqueues normal work and DROP enqueues nothing."""
    policy = SchedulingPolicy(
        expedited_quota=2, expedited_quota_window=timedelta(minutes=10), max_concurrent_workers=1
    )
    blocker = Job("blocker", blocking=True)
    job = Job(blocking=True)
    async with manager(clock, device, blocker, job, policy=policy) as wm:
        hold = await wm.enqueue(OneTimeWorkRequestBuilder("blocker").build())
        assert hold is not None
        await wait_for(wm, hold, state_is(WorkState.RUNNING))

        def expedited(policy: OutOfQuotaPolicy) -> Any:
            return OneTimeWorkRequestBuilder("job").set_expedited(policy).build()

        first = await wm.enqueue(expedited(OutOfQuotaPolicy.DROP))
        assert first is not None
        # The only normal slot is busy: the expedited slot starts it anyway.
        await wait_for(wm, first, state_is(WorkState.RUNNING))
        second = await wm.enqueue(expedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED))
        demoted = await wm.enqueue(expedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED))
        dropped_request = expedited(OutOfQuotaPolicy.DROP)
        dropped = await wm.enqueue(dropped_request)
        assert second is not None
        assert demoted is not None
        assert (await info_of(wm, second)).expedited
        assert not (await info_of(wm, demoted)).expedited
        assert dropped is None
        assert await wm.get_work_info(dropped_request.id) is None
        clock.advance(601)
        again = await wm.enqueue(expedited(OutOfQuotaPolicy.DROP))
        assert again is not None
        assert (await info_of(wm, again)).expedited
        job.release(True, keep_blocking=True)
        blocker.release(True)


@pytest.mark.parametrize("periodic", [False, True])
def test_wm15_backoff_with_device_idle_raises(periodic: bool) -> None:
    """WM-15: backoff criteria together with requires_device_idle raise at build time."""
    builder = (
        PeriodicWorkRequestBuilder("job", HOUR) if periodic else OneTimeWorkRequestBuilder("job")
    )
    builder.set_constraints(Constraints(requires_device_idle=True))
    assert builder.build().constraints.requires_device_idle  # idle alone is fine
    builder.set_backoff_criteria(BackoffPolicy.LINEAR, 60)
    with pytest.raises(InvalidWorkRequestError, match="idle mode job"):
        builder.build()


# -- WM-16, WM-17: unique work -----------------------------------------------------------


async def test_wm16_unique_keep(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-16: KEEP ignores the request iff unfinished work holds the name, else enqueues."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        first = await wm.enqueue_unique("n", ExistingWorkPolicy.KEEP, one_time().build())
        assert first is not None
        await wait_for(wm, first, state_is(WorkState.RUNNING))
        kept = await wm.enqueue_unique("n", ExistingWorkPolicy.KEEP, one_time().build())
        assert kept is None
        assert [i.id for i in await wm.get_work_infos_for_unique_work("n")] == [first]
        job.release(True)
        await wait_for(wm, first, state_is(WorkState.SUCCEEDED))
        second = await wm.enqueue_unique("n", ExistingWorkPolicy.KEEP, one_time().build())
        assert second is not None
        assert second != first
        assert [i.id for i in await wm.get_work_infos_for_unique_work("n")] == [second]


async def test_wm16_unique_replace(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-16: REPLACE cancels the running work (stop reason CANCELLED_BY_APP) and enqueues anew."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        old = await wm.enqueue_unique("n", ExistingWorkPolicy.REPLACE, one_time().build())
        assert old is not None
        await wait_for(wm, old, state_is(WorkState.RUNNING))
        new = await wm.enqueue_unique("n", ExistingWorkPolicy.REPLACE, one_time().build())
        assert new is not None
        replaced = await info_of(wm, old)
        assert replaced.state is WorkState.CANCELLED
        assert replaced.stop_reason == 1
        assert job.stopped_calls == 1
        await wait_for(wm, new, state_is(WorkState.RUNNING))
        job.release(True)
        await wait_for(wm, new, state_is(WorkState.SUCCEEDED))
        assert [i.id for i in await wm.get_work_infos_for_unique_work("n")] == [new]
        [run_new] = await wm.run_history(new)
        [run_old] = await wm.run_history(old)
    assert run_old.outcome is RunOutcome.CANCELLED
    assert run_new.outcome is RunOutcome.SUCCESS


async def test_wm16_unique_append(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-16: APPEND chains after the leaves; a FAILED/CANCELLED leaf makes new work so at once."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        a = await wm.enqueue_unique("chain", ExistingWorkPolicy.APPEND, one_time().build())
        assert a is not None
        b = await wm.enqueue_unique("chain", ExistingWorkPolicy.APPEND, one_time().build())
        assert b is not None
        assert (await info_of(wm, b)).state is WorkState.BLOCKED
        await wait_for(wm, a, state_is(WorkState.RUNNING))
        job.release(True, keep_blocking=True)
        await wait_for(wm, b, state_is(WorkState.RUNNING))
        job.release(False)
        await wait_for(wm, b, state_is(WorkState.FAILED))
        c = await wm.enqueue_unique("chain", ExistingWorkPolicy.APPEND, one_time().build())
        assert c is not None
        assert (await info_of(wm, c)).state is WorkState.FAILED

        d = await wm.enqueue_unique("other", ExistingWorkPolicy.APPEND, one_time("idle").build())
        assert d is not None  # no "idle" worker registered: it waits
        await wm.cancel_by_id(d)
        e = await wm.enqueue_unique("other", ExistingWorkPolicy.APPEND, one_time().build())
        assert e is not None
        assert (await info_of(wm, e)).state is WorkState.CANCELLED


async def test_wm16_unique_append_or_replace(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-16: APPEND_OR_REPLACE starts a fresh chain when a leaf FAILED, else appends."""
    job = Job(results=[False, True])
    async with manager(clock, device, job) as wm:
        a = await wm.enqueue_unique("n", ExistingWorkPolicy.APPEND_OR_REPLACE, one_time().build())
        assert a is not None
        await wait_for(wm, a, state_is(WorkState.FAILED))
        b = await wm.enqueue_unique("n", ExistingWorkPolicy.APPEND_OR_REPLACE, one_time().build())
        assert b is not None
        await wait_for(wm, b, state_is(WorkState.SUCCEEDED))
        assert [i.id for i in await wm.get_work_infos_for_unique_work("n")] == [b]
        c = await wm.enqueue_unique("n", ExistingWorkPolicy.APPEND_OR_REPLACE, one_time().build())
        assert c is not None
        await wait_for(wm, c, state_is(WorkState.SUCCEEDED))
        assert [i.id for i in await wm.get_work_infos_for_unique_work("n")] == [b, c]


async def test_wm17_unique_periodic_keep_and_reenqueue(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-17: periodic KEEP ignores; CANCEL_AND_REENQUEUE replaces and resets timing."""
    job = Job("tick")
    async with manager(clock, device, job) as wm:
        request = PeriodicWorkRequestBuilder("tick", HOUR).build()
        first = await wm.enqueue_unique("sync", ExistingPeriodicWorkPolicy.KEEP, request)
        assert first is not None
        await wait_for(wm, first, state_is(WorkState.ENQUEUED, period_count=1))
        again = PeriodicWorkRequestBuilder("tick", 2 * HOUR).build()
        assert await wm.enqueue_unique("sync", ExistingPeriodicWorkPolicy.KEEP, again) is None
        assert (await info_of(wm, first)).interval == HOUR
        clock.advance(600)
        fresh = await wm.enqueue_unique(
            "sync",
            ExistingPeriodicWorkPolicy.CANCEL_AND_REENQUEUE,
            PeriodicWorkRequestBuilder("tick", 2 * HOUR).set_initial_delay(60).build(),
        )
        assert fresh is not None
        assert fresh != first
        assert (await info_of(wm, first)).state is WorkState.CANCELLED
        info = await info_of(wm, fresh)
        assert info.period_count == 0
        assert info.next_schedule_time == clock.now() + 60
        with pytest.raises(InvalidWorkRequestError):
            await wm.enqueue_unique("sync", ExistingWorkPolicy.KEEP, request)


async def test_wm17_unique_periodic_update(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-17: UPDATE edits in place, keeps timing, bumps generation; a running run keeps the old."""
    job = Job("tick")
    async with manager(clock, device, job) as wm:
        v1 = PeriodicWorkRequestBuilder("tick", HOUR).set_input_data({"v": 1}).build()
        work_id = await wm.enqueue_unique("sync", ExistingPeriodicWorkPolicy.UPDATE, v1)
        assert work_id is not None
        before = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=1))
        clock.advance(600)
        v2 = (
            PeriodicWorkRequestBuilder("tick", 2 * HOUR)
            .set_input_data({"v": 2})
            .add_tag("v2")
            .build()
        )
        assert await wm.enqueue_unique("sync", ExistingPeriodicWorkPolicy.UPDATE, v2) == work_id
        after = await info_of(wm, work_id)
        assert after.generation == before.generation + 1
        assert after.period_count == 1
        assert after.interval == 2 * HOUR
        assert "v2" in after.tags
        assert after.next_schedule_time == before.next_schedule_time + HOUR  # same last enqueue

        clock.set(after.next_schedule_time)
        job.blocking = True
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        v3 = PeriodicWorkRequestBuilder("tick", 3 * HOUR).set_input_data({"v": 3}).set_id(work_id)
        assert await wm.update_work(v3.build()) is UpdateResult.APPLIED_FOR_NEXT_RUN
        job.release(True)
        done = await wait_for(wm, work_id, state_is(WorkState.ENQUEUED, period_count=2))
        assert done.generation == 2
        assert job.inputs[-1] == {"v": 2}  # the running instance kept the old spec
        clock.set(done.next_schedule_time)
        await job.wait_runs(3)
        assert job.inputs[-1] == {"v": 3}

        await wm.cancel_unique("sync")
        v4 = PeriodicWorkRequestBuilder("tick", HOUR).build()
        successor = await wm.enqueue_unique("sync", ExistingPeriodicWorkPolicy.UPDATE, v4)
        assert successor is not None
        assert successor != work_id  # a CANCELLED predecessor is replaced
        assert (await info_of(wm, successor)).generation == 0

        await wm.enqueue_unique("once", ExistingWorkPolicy.KEEP, one_time("idle").build())
        with pytest.raises(InvalidWorkRequestError):
            await wm.enqueue_unique("once", ExistingPeriodicWorkPolicy.UPDATE, v4)


# -- WM-18..WM-20: tags, queries, WorkInfo, data limits ----------------------------------


async def test_wm18_tags_queries_and_cancel(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-18: the worker name is a tag; cancel/query by id, tag and name; AND across, OR within."""
    async with manager(clock, device) as wm:  # no workers: everything stays ENQUEUED
        a = await wm.enqueue(one_time("upload").add_tag("red").build())
        b = await wm.enqueue(one_time("upload").add_tag("blue").build())
        c = await wm.enqueue_unique(
            "u", ExistingWorkPolicy.KEEP, one_time("fetch").add_tag("red").build()
        )
        d = await wm.enqueue(one_time("fetch").build())
        assert a is not None and b is not None and c is not None and d is not None  # noqa: PT018
        assert {i.id for i in await wm.get_tasks_by_tag("upload")} == {a, b}
        assert "upload" in (await info_of(wm, a)).tags
        both = WorkQuery(tags={"red", "blue"})
        assert {i.id for i in await wm.get_work_infos(both)} == {a, b, c}
        red_fetch = WorkQuery(tags={"red"}, unique_names={"u"}, states={WorkState.ENQUEUED})
        assert [i.id for i in await wm.get_work_infos(red_fetch)] == [c]
        assert await wm.get_work_infos(WorkQuery(ids={a, d}, tags={"blue"})) == []
        assert len(await wm.get_work_infos()) == 4

        assert await wm.cancel_by_tag("red") == 2
        assert await wm.cancel_unique("u") == 0  # already cancelled
        assert await wm.cancel_by_id(b) == 1
        assert await wm.cancel_by_id("no-such-id") == 0
        states = {i.id: i.state for i in await wm.get_work_infos()}
        assert states == {
            a: WorkState.CANCELLED,
            b: WorkState.CANCELLED,
            c: WorkState.CANCELLED,
            d: WorkState.ENQUEUED,
        }
        assert await wm.cancel_all() == 1
        cancelled = WorkQuery(states={WorkState.CANCELLED})
        assert len(await wm.get_work_infos(cancelled)) == 4


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_wm19_work_info_and_subscriptions(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-19: WorkInfo fields follow the state; every persisted change reaches subscribers."""
    job = Job(blocking=True)
    async with manager(clock, device, job) as wm:
        request = one_time().add_tag("t").build()
        work_id = await wm.enqueue(request)
        assert work_id is not None
        watch = wm.subscribe(work_id)
        batch = wm.subscribe(WorkQuery(tags={"t"}))
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
        await job.contexts[0].set_progress({"done": 1})
        running = await wait_for(wm, work_id, lambda i: i.progress == {"done": 1})
        assert running.state is WorkState.RUNNING
        assert math.isinf(running.next_schedule_time)
        assert running.output == {}
        job.release(TaskResult.success({"n": 5}))
        finished = await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
        assert finished.output == {"n": 5}
        assert finished.progress == {}
        assert finished.stop_reason is StopReason.NOT_STOPPED
        assert finished.generation == 0
        assert finished.tags == {"t", "job"}
        seen = []
        with anyio.fail_after(5):
            async for info in watch:
                seen.append((info.state, info.progress, info.output))
                if info.state is WorkState.SUCCEEDED:
                    break
        assert seen == [
            (WorkState.ENQUEUED, {}, {}),
            (WorkState.RUNNING, {}, {}),
            (WorkState.RUNNING, {"done": 1}, {}),
            (WorkState.SUCCEEDED, {}, {"n": 5}),
        ]
        lists = []
        with anyio.fail_after(5):
            async for infos in batch:
                lists.append([info.state for info in infos])
                if lists[-1] == [WorkState.SUCCEEDED]:
                    break
        assert lists == [
            [WorkState.ENQUEUED],
            [WorkState.RUNNING],
            [WorkState.RUNNING],
            [WorkState.SUCCEEDED],
        ]
        with pytest.raises(UnknownWorkError):
            wm.subscribe("no-such-id")
    assert [info async for info in watch] == []  # ended with the manager


async def test_wm20_data_limits_and_late_progress(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-20: progress after finishing is ignored; input, output or progress over 10 KB raise."""
    big = {"blob": "x" * 11_000}
    with pytest.raises(WorkDataTooLargeError):
        OneTimeWorkRequestBuilder("job").set_input_data(big)
    OneTimeWorkRequestBuilder("job").set_input_data({"blob": "x" * 10_000}).build()

    class Progress:
        task_id = "progress"
        error: Exception | None = None
        context: TaskContext | None = None

        async def execute(self, context: TaskContext) -> bool:
            self.context = context
            try:
                await context.set_progress(big)
            except WorkDataTooLargeError as exc:
                self.error = exc
            return True

    progress = Progress()
    job = Job("out", results=[TaskResult.success(big)])
    async with manager(clock, device, progress, job) as wm:
        work_id = await wm.enqueue(OneTimeWorkRequestBuilder("progress").build())
        assert work_id is not None
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
        assert isinstance(progress.error, WorkDataTooLargeError)
        assert progress.context is not None
        await progress.context.set_progress({"late": True})  # ignored, no error
        assert (await info_of(wm, work_id)).progress == {}

        out = await wm.enqueue(OneTimeWorkRequestBuilder("out").build())
        assert out is not None
        failed = await wait_for(wm, out, state_is(WorkState.FAILED))
        assert failed.output == {}
        [run] = await wm.run_history(out)
        assert run.error is not None
        assert run.error.startswith("WorkDataTooLargeError")


# -- WM-21, WM-22: order and recovery ------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [(DispatchOrder.FIFO, [0, 1, 2, 3]), (DispatchOrder.PRIORITY, [3, 2, 1, 0])],
)
async def test_wm21_dispatch_order(
    clock: FakeClock, device: SimulatedDevice, order: DispatchOrder, expected: list[int]
) -> None:
    """WM-21: eligible work starts FIFO by last enqueue time (strict); priority mode reorders it."""
    job = Job()
    device.set(connected=False)
    policy = SchedulingPolicy(dispatch_order=order, max_concurrent_workers=1)
    priorities = [SyncPriority.LOW, SyncPriority.NORMAL, SyncPriority.HIGH, SyncPriority.CRITICAL]
    async with manager(clock, device, job, policy=policy) as wm:
        ids = []
        for n, priority in enumerate(priorities):
            request = (
                one_time()
                .set_input_data({"n": n})
                .set_priority(priority)
                .set_constraints(Constraints(required_network_type=NetworkType.CONNECTED))
                .build()
            )
            ids.append(await wm.enqueue(request))
            clock.advance(1)
        device.set(connected=True)
        for work_id in ids:
            assert work_id is not None
            await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))
    assert [data["n"] for data in job.inputs] == expected


def _spec(
    n: int, *, last_enqueue: float, priority: SyncPriority, expedited: bool = False
) -> WorkSpec:
    request = one_time().set_input_data({"n": n}).set_priority(priority).build()
    request = dataclasses.replace(request, expedited=expedited)
    return WorkSpec(
        request=request, state=WorkState.ENQUEUED, last_enqueue_time=last_enqueue, seq=n
    )


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(SyncPriority))), max_size=12))
def test_wm21_fifo_plan_is_sorted_by_last_enqueue(entries: list[tuple[int, SyncPriority]]) -> None:
    """WM-21: in strict mode the dispatch plan is ordered by (last enqueue time, insertion)."""
    specs = [_spec(n, last_enqueue=T0 + t, priority=p) for n, (t, p) in enumerate(entries)]
    plan = plan_dispatch(
        specs,
        T0 + 10,
        DeviceState(),
        registered={"job"},
        running=0,
        running_expedited=0,
        policy=SchedulingPolicy(max_concurrent_workers=100),
    )
    started = [spec for spec, _ in plan.start]
    assert started == sorted(specs, key=lambda s: (s.last_enqueue_time, s.seq))
    assert plan.wake_at is None


async def test_wm22_running_rows_recovered_at_startup(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-22: a RUNNING row found at start-up goes back to ENQUEUED and runs again."""
    db = Database(":memory:")
    store = WorkStore(db)
    request = one_time().add_tag("x").build()
    crashed = WorkSpec(
        request=request,
        state=WorkState.RUNNING,
        last_enqueue_time=T0 - 100,
        run_attempt_count=1,
        enqueued_at=T0 - 100,
    )
    spec = store.insert(crashed, now=T0 - 100)
    store.start_run(spec, started_at=T0 - 50, expedited=False)
    job = Job(blocking=True)
    async with manager(clock, device, database=db) as wm:
        info = await info_of(wm, request.id)
        assert info.state is WorkState.ENQUEUED
        assert info.stop_reason is StopReason.UNKNOWN
        assert info.run_attempt_count == 1
        wm.register(job)  # registering releases the work
        await wait_for(wm, request.id, state_is(WorkState.RUNNING, run_attempt_count=2))
        assert job.attempts == [1]
        job.release(True)
        await wait_for(wm, request.id, state_is(WorkState.SUCCEEDED))
        runs = await wm.run_history(request.id)
    assert [run.outcome for run in reversed(runs)] == [RunOutcome.INTERRUPTED, RunOutcome.SUCCESS]
    db.close()


# -- WM-23: the test driver ----------------------------------------------------------------


async def test_wm23_driver_manual_mode(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-23: delays and constraints are released by the driver, not by the clock or device."""
    driver = WorkDriver()
    job = Job()
    tick = Job("tick")
    async with manager(clock, device, job, tick, driver=driver) as wm:
        delayed = await wm.enqueue(one_time().set_initial_delay(HOUR).build())
        assert delayed is not None
        clock.advance(2 * HOUR)
        await settle(driver)
        assert job.runs == 0
        driver.set_initial_delay_met(delayed)
        await wait_for(wm, delayed, state_is(WorkState.SUCCEEDED))

        charging = Constraints(requires_charging=True)
        constrained = await wm.enqueue(one_time().set_constraints(charging).build())
        assert constrained is not None
        await settle(driver)
        assert job.runs == 1  # the device is charging, but only the driver releases constraints
        driver.set_all_constraints_met(constrained)
        await wait_for(wm, constrained, state_is(WorkState.SUCCEEDED))

        periodic = await wm.enqueue(PeriodicWorkRequestBuilder("tick", HOUR).build())
        assert periodic is not None
        await wait_for(wm, periodic, state_is(WorkState.ENQUEUED, period_count=1))
        clock.advance(5 * HOUR)
        await settle(driver)
        assert tick.runs == 1
        driver.set_period_delay_met(periodic)
        await wait_for(wm, periodic, state_is(WorkState.ENQUEUED, period_count=2))
        await settle(driver)
        assert tick.runs == 2  # the override was used up by that run

        with pytest.raises(UnknownWorkError):
            driver.set_all_constraints_met("no-such-id")
        with pytest.raises(UnknownWorkError):
            driver.set_initial_delay_met("no-such-id")
        with pytest.raises(UnknownWorkError):
            driver.set_period_delay_met("no-such-id")
        with pytest.raises(InvalidWorkRequestError, match="isn't periodic"):
            driver.set_period_delay_met(delayed)


async def test_wm23_driver_virtual_clock_mode(clock: FakeClock, device: SimulatedDevice) -> None:
    """WM-23: in virtual-clock mode the delay methods raise and only the clock releases work."""
    driver = WorkDriver(virtual_clock=True)
    job = Job()
    async with manager(clock, device, job, driver=driver) as wm:
        work_id = await wm.enqueue(one_time().set_initial_delay(HOUR).build())
        assert work_id is not None
        with pytest.raises(LifecycleError):
            driver.set_initial_delay_met(work_id)
        with pytest.raises(LifecycleError):
            driver.set_period_delay_met(work_id)
        await settle(driver)
        assert job.runs == 0
        clock.advance(HOUR)
        await wait_for(wm, work_id, state_is(WorkState.SUCCEEDED))


# -- lifecycle -----------------------------------------------------------------------------


async def test_lifecycle_errors(clock: FakeClock, device: SimulatedDevice) -> None:
    """Using the manager before start or after close raises LifecycleError; it starts once."""
    db = Database(":memory:")
    wm = WorkManager(db, clock=clock, device=device)
    with pytest.raises(LifecycleError, match="not started"):
        await wm.enqueue(one_time().build())
    async with wm:
        with pytest.raises(LifecycleError):
            await wm.__aenter__()
    with pytest.raises(LifecycleError, match="closed"):
        await wm.get_work_info("x")
    with pytest.raises(LifecycleError):
        wm.register(Job())
    db.close()


async def test_close_returns_running_work_to_enqueued(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """Closing the manager stops running work; it is ENQUEUED (stop reason UNKNOWN) on disk."""
    db = Database(":memory:")
    job = Job(blocking=True)
    async with manager(clock, device, job, database=db) as wm:
        work_id = await wm.enqueue(one_time().build())
        assert work_id is not None
        await wait_for(wm, work_id, state_is(WorkState.RUNNING))
    spec = WorkStore(db).get(work_id)
    assert spec is not None
    assert spec.state is WorkState.ENQUEUED
    assert spec.stop_reason is StopReason.UNKNOWN
    assert job.cancelled_runs == 1
    db.close()


async def test_idle_manager_sleeps_until_the_next_due_time(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """The dispatcher sleeps on the clock until the next run time (capped): no busy polling."""
    async with manager(clock, device, Job()) as wm:
        await wm.enqueue(one_time().set_initial_delay(120).build())
        await settle(wm)
        assert clock.next_deadline() == T0 + 120
        before = clock.sleepers
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert clock.sleepers == before  # nothing woke up meanwhile


def test_next_run_time_matches_androidx_for_plain_inputs() -> None:
    """next_run_time: one-time, first and later periods, and backed-off work."""
    base = WorkSpec(
        request=one_time().set_initial_delay(50).build(),
        state=WorkState.ENQUEUED,
        last_enqueue_time=1000.0,
    )
    assert next_run_time(base) == 1050.0
    assert next_run_time(dataclasses.replace(base, run_attempt_count=3)) == 1000.0 + 120
    periodic = dataclasses.replace(
        base, request=PeriodicWorkRequestBuilder("job", HOUR, 1200).set_initial_delay(50).build()
    )
    assert next_run_time(periodic) == 1000.0 + 50 + HOUR - 1200
    assert next_run_time(dataclasses.replace(periodic, period_count=4)) == 1000.0 + HOUR


@pytest.mark.parametrize(
    ("prerequisites", "expected"),
    [
        ([], WorkState.ENQUEUED),
        ([WorkState.SUCCEEDED, None], WorkState.ENQUEUED),
        ([WorkState.SUCCEEDED, WorkState.RUNNING], WorkState.BLOCKED),
        ([WorkState.CANCELLED, WorkState.ENQUEUED], WorkState.CANCELLED),
        ([WorkState.CANCELLED, WorkState.FAILED], WorkState.FAILED),
    ],
)
def test_wm10_initial_state_from_prerequisites(
    prerequisites: list[WorkState | None], expected: WorkState
) -> None:
    """WM-10/WM-16: new work is FAILED, CANCELLED, ENQUEUED or BLOCKED by its prerequisites."""
    assert initial_state(prerequisites) is expected


def test_end_of_run_ignores_results_of_finished_or_stopped_work() -> None:
    """WM-11/WM-16: a stopped run or one whose work was cancelled meanwhile leaves no result."""
    running = WorkSpec(
        request=one_time().build(),
        state=WorkState.RUNNING,
        last_enqueue_time=T0,
        run_attempt_count=1,
    )
    cancelled = dataclasses.replace(running, state=WorkState.CANCELLED)
    assert end_of_run(cancelled, T0 + 5, stop=None, outcome=TaskOutcome.SUCCESS, output={}) == (
        None,
        RunOutcome.CANCELLED,
        StopReason.CANCELLED_BY_APP,
    )
    spec, outcome, reason = end_of_run(
        running, T0 + 5, stop=StopReason.TIMEOUT, outcome=TaskOutcome.SUCCESS, output={"x": 1}
    )
    assert spec is not None
    assert (spec.state, spec.output, spec.last_enqueue_time) == (WorkState.ENQUEUED, {}, T0)
    assert (outcome, reason) == (RunOutcome.STOPPED, StopReason.TIMEOUT)
    spec, outcome, _ = end_of_run(running, T0 + 5, stop=None, outcome=None, output={})
    assert spec is not None
    assert (spec.state, outcome) == (WorkState.FAILED, RunOutcome.FAILURE)


async def test_prune_keeps_what_unfinished_work_depends_on(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """prune() drops old finished work and its history, but not prerequisites still needed."""
    async with manager(clock, device, Job()) as wm:
        done = await wm.enqueue(one_time().build())
        assert done is not None
        await wait_for(wm, done, state_is(WorkState.SUCCEEDED))
        needed = await wm.enqueue(one_time().build())
        assert needed is not None
        await wait_for(wm, needed, state_is(WorkState.SUCCEEDED))
        waiting = await wm.enqueue(one_time("idle").build(), depends_on=[needed])
        assert waiting is not None
        clock.advance(2 * HOUR)
        assert await wm.prune(HOUR) == 1
        assert await wm.get_work_info(done) is None
        assert await wm.run_history(done) == []
        assert (await info_of(wm, needed)).state is WorkState.SUCCEEDED


# -- the three departures found from outside, fixed ------------------------------------------


async def test_wm02_wm07_reclamping_keeps_a_request_without_flex_window(
    clock: FakeClock, device: SimulatedDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """WM-2/WM-7: a 1-min request without flex, re-clamped by a 15-min manager, becomes
    interval 15 min with no flex window (flex == interval) and its first run is not delayed."""
    desktop = SchedulingPolicy.desktop(timedelta(minutes=1))
    request = PeriodicWorkRequestBuilder("tick", 60, policy=desktop).build()
    assert (request.interval, request.flex) == (60.0, 60.0)
    job = Job("tick")
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        async with manager(clock, device, job) as wm:
            work_id = await wm.enqueue(request)
            assert work_id is not None
            info = await info_of(wm, work_id)
            assert (info.interval, info.flex) == (900.0, 900.0)
            assert info.next_schedule_time == T0  # no invented (interval - flex) delay
            await job.wait_runs(1)
    assert "Interval duration lesser than minimum allowed value" in caplog.text
    assert "Flex duration" not in caplog.text


async def test_wm02_reclamping_keeps_a_real_flex_window(
    clock: FakeClock, device: SimulatedDevice
) -> None:
    """WM-2: a request with a flex window keeps one after re-clamping (raised to the floor)."""
    desktop = SchedulingPolicy.desktop(timedelta(minutes=3))
    request = PeriodicWorkRequestBuilder("tick", 180, 60, policy=desktop).build()
    assert (request.interval, request.flex) == (180.0, 60.0)
    async with manager(clock, device) as wm:
        work_id = await wm.enqueue(request)
        assert work_id is not None
        info = await info_of(wm, work_id)
    assert (info.interval, info.flex) == (900.0, 300.0)
    assert info.next_schedule_time == T0 + 600


def test_wm01_config_clamp_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """WM-1: BackgroundSyncConfig with min_interval under the floor logs the clamp warning."""
    from nexus_store import BackgroundSyncConfig  # noqa: PLC0415 - the public name

    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        config = BackgroundSyncConfig(min_interval=timedelta(minutes=1))
    assert config.effective_interval == timedelta(minutes=15)
    assert "Interval duration lesser than minimum allowed value" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        BackgroundSyncConfig(min_interval=timedelta(minutes=20))
        BackgroundSyncConfig(
            min_interval=timedelta(minutes=1), min_periodic_floor=timedelta(minutes=1)
        )
    assert caplog.text == ""


def test_wm01_wm03_negative_values_are_clamped_with_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """WM-1/WM-3: a negative interval, flex or backoff delay is clamped (with the warning),
    not refused; a value that is not a finite number is still refused."""
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        periodic = PeriodicWorkRequestBuilder("job", -60, -5).build()
        backoff = (
            OneTimeWorkRequestBuilder("job")
            .set_backoff_criteria(BackoffPolicy.LINEAR, timedelta(seconds=-30))
            .build()
        )
    assert (periodic.interval, periodic.flex) == (900.0, 300.0)
    assert backoff.backoff_delay == 10.0
    assert "Interval duration lesser than minimum allowed value" in caplog.text
    assert "Flex duration lesser than minimum" in caplog.text
    assert "Backoff delay lesser than minimum" in caplog.text
    with pytest.raises(InvalidWorkRequestError, match="finite"):
        PeriodicWorkRequestBuilder("job", math.nan)
    with pytest.raises(InvalidWorkRequestError, match="finite"):
        OneTimeWorkRequestBuilder("job").set_backoff_criteria(BackoffPolicy.LINEAR, math.inf)


async def test_wm03_config_with_negative_backoff_schedules(
    clock: FakeClock, device: SimulatedDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """WM-3: a config with a negative backoff delay schedules its periodic work with 10 s."""
    from nexus_store import BackgroundSyncConfig  # noqa: PLC0415 - the public name
    from nexus_store.sync.workmanager._adapter import periodic_request  # noqa: PLC0415

    config = BackgroundSyncConfig(backoff_delay=timedelta(seconds=-1))
    with caplog.at_level(logging.WARNING, logger=WORK_LOGGER):
        request = periodic_request(config, SchedulingPolicy.android())
    assert request.backoff_delay == 10.0
    assert "Backoff delay lesser than minimum" in caplog.text
