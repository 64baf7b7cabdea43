"""The BGTask-like scheduler against its statements BG-1…BG-15, one test (or more) each.

Each test names the statement it pins, after iOS's BackgroundTasks framework: declared
identifiers, one pending refresh, ``earliest_begin``, budgets and expiration, no retry.

Every test is driven by a FakeClock, a SimulatedDevice and the simulate APIs; every wait
is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_store import (
    ImmediateRunIneligibleError,
    InvalidWorkRequestError,
    LifecycleError,
    NotPermittedError,
    TooManyPendingTaskRequestsError,
    UnavailableError,
    UnknownWorkError,
)
from nexus_store._database import Database
from nexus_store.sync import DeviceState, TaskContext, TaskResult
from nexus_store.sync.bgtask._bgtask import BGTaskScheduler
from nexus_store.sync.bgtask._handle import BGTaskHandle, LaunchRecord, handler_for_task
from nexus_store.sync.bgtask._launch import (
    AppUsage,
    DeterministicLaunchPolicy,
    LaunchContext,
    LaunchDecision,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
    plan_launches,
    unmet_conditions,
)
from nexus_store.sync.bgtask._requests import (
    MAX_PENDING_APP_REFRESH,
    MAX_PENDING_PROCESSING,
    USAGE_WINDOW,
    AppRefreshRequest,
    BGTaskRequest,
    ContinuedProcessingRequest,
    ProcessingRequest,
    RequestKind,
    SubmissionStrategy,
    check_pending_limits,
)
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test here on asyncio and on trio."""
    return str(request.param)


T0 = 1_700_000_000.0
WAIT = 5  # seconds of real time any single wait may take before the test fails


class Probe:
    """A handler that records its launches and behaves as told.

    Args:
        clock: to timestamp expirations.
        behaviour: ``"complete"`` calls set_task_completed at once, ``"hang"`` waits forever.
        success: the result a completing handler reports.
        expiration: ``None`` sets no expiration handler, ``"ignore"`` sets one that only
            records, ``"complete"`` sets one that completes the task unsuccessfully.
        on_launch: extra work done at launch (e.g. resubmitting).
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        behaviour: str = "complete",
        success: bool = True,
        expiration: str | None = "ignore",
        on_launch: Callable[[BGTaskHandle], None] | None = None,
    ) -> None:
        self.clock = clock
        self.behaviour = behaviour
        self.success = success
        self.expiration = expiration
        self.on_launch = on_launch
        self.handles: list[BGTaskHandle] = []
        self.expired_at: list[float] = []
        self.cancelled = 0
        self._changed = anyio.Event()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def __call__(self, task: BGTaskHandle) -> None:
        self.handles.append(task)
        if self.expiration is not None:

            def on_expire() -> None:
                self.expired_at.append(self.clock.now())
                if self.expiration == "complete":
                    task.set_task_completed(False, message="wound down")
                self._bump()

            task.expiration_handler = on_expire
        if self.on_launch is not None:
            self.on_launch(task)
        self._bump()
        if self.behaviour == "complete":
            task.set_task_completed(self.success)
            return
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            self._bump()
            raise

    async def wait(self, predicate: Callable[[], bool]) -> None:
        """Wait (bounded) until ``predicate()`` holds."""
        with anyio.fail_after(WAIT):
            while not predicate():
                await self._changed.wait()

    async def launched(self, count: int = 1) -> BGTaskHandle:
        """Wait for the ``count``-th launch and return its handle."""
        await self.wait(lambda: len(self.handles) >= count)
        return self.handles[count - 1]


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at T0."""
    return FakeClock(start=T0)


@pytest.fixture
def device() -> SimulatedDevice:
    """A connected, charging device the user is using (not idle)."""
    return SimulatedDevice()


@pytest.fixture
def db() -> Iterator[Database]:
    """An in-memory database."""
    database = Database(":memory:")
    yield database
    database.close()


@asynccontextmanager
async def running(
    db: Database,
    identifiers: list[str],
    clock: FakeClock,
    device: SimulatedDevice,
    policy: LaunchPolicy | None = None,
    **options: Any,
) -> AsyncIterator[BGTaskScheduler]:
    """A running scheduler with the deterministic policy unless told otherwise."""
    scheduler = BGTaskScheduler(
        db,
        identifiers,
        clock=clock,
        device=device,
        policy=policy or DeterministicLaunchPolicy(),
        **options,
    )
    with anyio.fail_after(WAIT):
        async with scheduler:
            yield scheduler


async def finished(handle: BGTaskHandle) -> LaunchRecord:
    """The handle's history record, waited for (bounded)."""
    with anyio.fail_after(WAIT):
        return await handle.wait_finished()


# -- BG-1 ---------------------------------------------------------------------------------


async def test_bg01_undeclared_identifier_not_permitted(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-1: submitting (or registering) an identifier that was not declared raises NotPermitted."""
    probe = Probe(clock)
    async with running(db, ["app.refresh"], clock, device, handlers={"app.refresh": probe}) as s:
        with pytest.raises(NotPermittedError):
            s.submit(AppRefreshRequest("app.other"))
        with pytest.raises(NotPermittedError):
            s.submit(ProcessingRequest("app.other"))
        with pytest.raises(NotPermittedError):
            s.register("app.other", probe)
        assert s.pending_requests() == []


async def test_bg01_every_handler_registered_before_first_submit(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-1: every declared identifier needs a handler before the first submit; none after it."""
    probe = Probe(clock)
    async with running(db, ["a", "b"], clock, device) as s:
        s.register("a", probe)
        with pytest.raises(LifecycleError, match="'b'"):
            s.submit(AppRefreshRequest("a"))
        with pytest.raises(LifecycleError, match="already registered"):
            s.register("a", probe)
        s.register("b", probe)
        s.submit(AppRefreshRequest("a"))
        await probe.launched()


async def test_bg01_handlers_registered_in_every_process(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-1: a request kept from an earlier process launches only once this process registered."""
    first = Probe(clock)
    async with running(db, ["app.refresh"], clock, device, handlers={"app.refresh": first}) as s:
        s.submit(AppRefreshRequest("app.refresh", earliest_begin=T0 + 60))
    assert first.handles == []
    second = Probe(clock)
    async with running(db, ["app.refresh"], clock, device) as s:
        clock.advance(60)
        await s.settle()
        assert second.handles == []
        assert "waiting for handlers" in (s.pending_reason("app.refresh") or "")
        s.register("app.refresh", second)
        await s.settle()
        handle = await second.launched()
        assert handle.identifier == "app.refresh"


# -- BG-2 ---------------------------------------------------------------------------------


def test_bg02_request_kinds_and_defaults() -> None:
    """BG-2: AppRefresh has no options; Processing has two conditions, both False."""
    refresh = AppRefreshRequest("r")
    assert [f.name for f in dataclasses.fields(refresh)] == ["identifier", "earliest_begin"]
    assert refresh.kind is RequestKind.APP_REFRESH
    assert refresh.earliest_begin is None
    processing = ProcessingRequest("p")
    assert processing.kind is RequestKind.PROCESSING
    assert processing.requires_network is False
    assert processing.requires_external_power is False
    assert ProcessingRequest("p", None, True, True) == ProcessingRequest(
        "p", requires_network=True, requires_external_power=True
    )


@pytest.mark.parametrize(
    ("request_", "state", "unmet"),
    [
        (AppRefreshRequest("r"), DeviceState(connected=False, charging=False), 0),
        (ProcessingRequest("p"), DeviceState(idle=True, connected=False, charging=False), 0),
        (ProcessingRequest("p", requires_network=True), DeviceState(idle=True, connected=False), 1),
        (
            ProcessingRequest("p", requires_external_power=True),
            DeviceState(idle=True, charging=False, battery_percent=80),
            1,
        ),
        (
            ProcessingRequest("p", requires_external_power=True),
            DeviceState(idle=True, charging=False, battery_percent=None),
            0,
        ),
        (ProcessingRequest("p"), DeviceState(idle=False), 1),
    ],
)
def test_bg02_request_conditions(request_: BGTaskRequest, state: DeviceState, unmet: int) -> None:
    """BG-2: a processing request's network/power options are conditions; refresh has none."""
    assert len(unmet_conditions(request_, state)) == unmet


async def test_bg02_processing_waits_for_network_and_power(db: Database, clock: FakeClock) -> None:
    """BG-2: a processing request needing network and external power waits for both."""
    device = SimulatedDevice(idle=True, connected=False, charging=False, battery_percent=50)
    probe = Probe(clock)
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        s.submit(ProcessingRequest("p", requires_network=True, requires_external_power=True))
        await s.settle()
        assert probe.handles == []
        assert "no network" in (s.pending_reason("p") or "")
        device.set(connected=True)
        await s.settle()
        assert probe.handles == []
        assert "external power" in (s.pending_reason("p") or "")
        device.set(charging=True)
        await probe.launched()


# -- BG-3 ---------------------------------------------------------------------------------


async def test_bg03_one_pending_refresh_limit(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-3: a second pending AppRefresh request raises TooManyPendingTaskRequests."""
    probe = Probe(clock)
    ids = ["r1", "r2"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        s.submit(AppRefreshRequest("r1", earliest_begin=T0 + 60))
        with pytest.raises(TooManyPendingTaskRequestsError):
            s.submit(AppRefreshRequest("r2", earliest_begin=T0 + 60))
        assert [r.identifier for r in s.pending_requests()] == ["r1"]


async def test_bg03_ten_pending_processing_limit(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-3: ten pending Processing requests are allowed, the eleventh raises; refresh is apart."""
    probe = Probe(clock)
    ids = [f"p{i}" for i in range(11)] + ["r"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        for i in range(10):
            s.submit(ProcessingRequest(f"p{i}"))
        with pytest.raises(TooManyPendingTaskRequestsError):
            s.submit(ProcessingRequest("p10"))
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))  # its own limit
        kinds = [r.kind for r in s.pending_requests()]
        assert kinds.count(RequestKind.PROCESSING) == MAX_PENDING_PROCESSING
        assert kinds.count(RequestKind.APP_REFRESH) == MAX_PENDING_APP_REFRESH


@given(
    st.lists(st.tuples(st.sampled_from(["refresh", "processing"]), st.integers(0, 14)), max_size=40)
)
def test_bg03_limits_against_a_model(submits: list[tuple[str, int]]) -> None:
    """BG-3/BG-4: check_pending_limits refuses exactly the submits a simple model refuses."""
    pending: dict[str, BGTaskRequest] = {}
    for kind, n in submits:
        ident = f"id{n}"
        request: BGTaskRequest = (
            AppRefreshRequest(ident) if kind == "refresh" else ProcessingRequest(ident)
        )
        others = [r for i, r in pending.items() if i != ident and r.kind is request.kind]
        limit = 1 if kind == "refresh" else 10
        if len(others) + 1 > limit:
            with pytest.raises(TooManyPendingTaskRequestsError):
                check_pending_limits(list(pending.values()), request)
        else:
            check_pending_limits(list(pending.values()), request)
            pending[ident] = request
        counts = [r.kind for r in pending.values()]
        assert counts.count(RequestKind.APP_REFRESH) <= 1
        assert counts.count(RequestKind.PROCESSING) <= 10


# -- BG-4 ---------------------------------------------------------------------------------


async def test_bg04_submit_replaces_pending_request(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-4: resubmitting a pending identifier replaces it (no duplicate, new options win)."""
    device.set(idle=True)
    probe = Probe(clock)
    async with running(db, ["p", "r"], clock, device, handlers={"p": probe, "r": probe}) as s:
        s.submit(ProcessingRequest("p", earliest_begin=T0 + 600))
        s.submit(ProcessingRequest("p", earliest_begin=T0 + 60, requires_network=True))
        assert s.pending_requests() == [
            ProcessingRequest("p", earliest_begin=T0 + 60, requires_network=True)
        ]
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 900))
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 1000))  # at the limit: replaces
        assert len(s.pending_requests()) == 2
        clock.advance(60)
        handle = await probe.launched()
        assert handle.started_at == T0 + 60
        assert handle.request == ProcessingRequest(
            "p", earliest_begin=T0 + 60, requires_network=True
        )
        await finished(handle)
        clock.advance(600 - 60)
        await s.settle()
        assert len(probe.handles) == 1  # the replaced request never launches


# -- BG-5 ---------------------------------------------------------------------------------


async def test_bg05_never_before_earliest_begin(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-5: a task never launches before earliest_begin; None means no delay."""
    probe = Probe(clock)
    async with running(db, ["r", "p"], clock, device, handlers={"r": probe, "p": probe}) as s:
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        clock.advance(59.5)
        await s.settle()
        assert probe.handles == []
        clock.advance(0.5)
        handle = await probe.launched()
        assert handle.started_at >= T0 + 60
        await finished(handle)
        device.set(idle=True)
        s.submit(ProcessingRequest("p"))  # None: launches without delay
        second = await probe.launched(2)
        assert second.started_at == clock.now()


async def test_bg05_no_guaranteed_upper_bound(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-5: once earliest_begin has passed the launch may still wait (here: battery low)."""
    device.set(charging=False, battery_percent=15, battery_low=True)
    probe = Probe(clock)
    async with running(
        db, ["r"], clock, device, policy=OpportunisticLaunchPolicy(), handlers={"r": probe}
    ) as s:
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        clock.advance(3 * 24 * 3600)
        await s.settle()
        assert probe.handles == []
        assert s.pending_reason("r") == "battery low"
        device.set(charging=True)
        handle = await probe.launched()
        assert handle.started_at == T0 + 3 * 24 * 3600


class _Careless:
    """A policy that says "now" for everything, ignoring earliest_begin."""

    def decide(self, request: BGTaskRequest, context: LaunchContext) -> LaunchDecision:
        return LaunchDecision(0.0, "now")


def test_bg05_plan_clamps_a_careless_policy() -> None:
    """BG-5: even a policy answering "now" cannot launch a request before its earliest_begin."""
    context = LaunchContext(now=T0, device=DeviceState(idle=True))
    plan = plan_launches(
        [AppRefreshRequest("r", earliest_begin=T0 + 10), ProcessingRequest("p")],
        context,
        _Careless(),
    )
    assert [r.identifier for r in plan.due] == ["p"]
    assert plan.next_at == T0 + 10


# -- BG-6 ---------------------------------------------------------------------------------


async def test_bg06_requests_are_one_shot(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-6: a launched request is removed and does not launch again by itself."""
    probe = Probe(clock)
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        assert s.pending_requests() == []
        await finished(handle)
        for _ in range(3):
            clock.advance(24 * 3600)
            await s.settle()
        assert len(probe.handles) == 1


async def test_bg06_recurring_only_by_resubmitting(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-6: a handler that resubmits itself makes the task recur."""
    holder: list[BGTaskScheduler] = []

    def resubmit(task: BGTaskHandle) -> None:
        holder[0].submit(AppRefreshRequest("r", earliest_begin=clock.now() + 900))

    probe = Probe(clock, on_launch=resubmit)
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        holder.append(s)
        s.submit(AppRefreshRequest("r"))
        await probe.launched()
        assert [r.earliest_begin for r in s.pending_requests()] == [T0 + 900]
        clock.advance(900)
        second = await probe.launched(2)
        assert second.started_at == T0 + 900


# -- BG-7 ---------------------------------------------------------------------------------


async def test_bg07_refresh_budget_expiration_before_end(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-7: a refresh launch has a 30 s budget; its expiration handler fires before it ends."""
    probe = Probe(clock, behaviour="hang", expiration="complete")
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        assert handle.budget == 30.0
        clock.advance(24.9)
        await s.settle()
        assert probe.expired_at == []
        clock.advance(0.1)
        record = await finished(handle)
        assert probe.expired_at == [T0 + 25]
        assert record.duration == 25.0 < 30.0
        assert record.success is False
        assert record.message == "wound down"


async def test_bg07_budgets_configurable(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-7: the refresh budget can be a few seconds; processing tasks get minutes."""
    device.set(idle=True)
    probe = Probe(clock, behaviour="hang", expiration="complete")
    async with running(
        db, ["r", "p"], clock, device, handlers={"r": probe, "p": probe}, refresh_budget=3.0
    ) as s:
        s.submit(AppRefreshRequest("r"))
        refresh = await probe.launched()
        clock.advance(1.5)  # the lead is capped at half a short budget
        assert (await finished(refresh)).duration == 1.5
        s.submit(ProcessingRequest("p"))
        processing = await probe.launched(2)
        assert processing.budget == 300.0
        clock.advance(295)
        assert (await finished(processing)).duration == 295.0
    assert probe.expired_at == [T0 + 1.5, T0 + 1.5 + 295]


async def test_bg07_expiration_may_fire_early(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-7: expiration can come before the budget's lead time (here after 2 s)."""
    probe = Probe(clock, behaviour="hang", expiration="complete")
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        clock.advance(2)
        s.simulate_expiration("r")
        record = await finished(handle)
        assert probe.expired_at == [T0 + 2]
        assert record.duration == 2.0


# -- BG-8 ---------------------------------------------------------------------------------


async def test_bg08_completed_task_recorded(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-8: set_task_completed(success) ends the launch and records the result."""
    ok, bad = Probe(clock), Probe(clock, success=False)
    async with running(db, ["a", "b"], clock, device, handlers={"a": ok, "b": bad}) as s:
        s.submit(AppRefreshRequest("a"))
        assert (await finished(await ok.launched())).success is True
        s.submit(AppRefreshRequest("b"))
        assert (await finished(await bad.launched())).success is False
        assert [(r.identifier, r.success) for r in s.history()] == [("b", False), ("a", True)]


async def test_bg08_not_completed_is_killed_unsuccessful(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-8: a task not completed by the end of its budget is killed and recorded unsuccessful."""
    probe = Probe(clock, behaviour="hang", expiration="ignore")
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        clock.advance(25)
        await probe.wait(lambda: probe.expired_at != [])
        assert not handle.completed
        clock.advance(5)
        record = await finished(handle)
        assert probe.cancelled == 1  # the handler's scope was cancelled
        assert record.success is False
        assert "killed" in record.message
        assert record.duration == 30.0


async def test_bg08_no_expiration_handler_marks_unsuccessful(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-8: without an expiration handler, expiry marks the task complete and unsuccessful."""
    probe = Probe(clock, behaviour="hang", expiration=None)
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        clock.advance(25)
        record = await finished(handle)
        assert record.success is False
        assert "no expiration handler" in record.message
        assert record.duration == 25.0
        assert probe.cancelled == 1


async def test_bg08_no_automatic_retry(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-8: failed, killed and crashing launches are not retried."""

    async def crashing(task: BGTaskHandle) -> None:
        raise RuntimeError("boom")

    failing = Probe(clock, success=False)
    hanging = Probe(clock, behaviour="hang", expiration=None)
    handlers = {"fail": failing, "hang": hanging, "crash": crashing}
    async with running(db, list(handlers), clock, device, handlers=handlers) as s:
        s.submit(AppRefreshRequest("fail"))
        await finished(await failing.launched())
        s.submit(AppRefreshRequest("hang"))
        hang = await hanging.launched()
        clock.advance(30)
        await finished(hang)
        s.submit(AppRefreshRequest("crash"))
        with anyio.fail_after(WAIT):
            while len(s.history()) < 3 or s.history()[0].success is None:
                await s.settle()
        assert "RuntimeError: boom" in s.history("crash")[0].message
        clock.advance(7 * 24 * 3600)
        await s.settle()
        assert s.pending_requests() == []
        assert len(s.history()) == 3
        assert all(r.success is False for r in s.history())


# -- BG-9 ---------------------------------------------------------------------------------


async def test_bg09_processing_only_while_idle(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-9: a processing task launches only in an idle window of the device."""
    probe = Probe(clock)
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        s.submit(ProcessingRequest("p"))
        clock.advance(3600)
        await s.settle()
        assert probe.handles == []
        assert "in use" in (s.pending_reason("p") or "")
        device.set(idle=True)
        handle = await probe.launched()
        assert handle.started_at == T0 + 3600


async def test_bg09_processing_terminated_when_device_becomes_active(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-9: a running processing task is terminated (expiration, then kill) when the user comes."""
    device.set(idle=True)
    probe = Probe(clock, behaviour="hang", expiration="ignore")
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        s.submit(ProcessingRequest("p"))
        handle = await probe.launched()
        clock.advance(10)
        device.set(idle=False)
        await probe.wait(lambda: probe.expired_at == [T0 + 10])
        clock.advance(5)
        record = await finished(handle)
        assert record.success is False
        assert "device is in use" in record.message
        assert probe.cancelled == 1


async def test_bg09_refresh_not_affected_by_device_use(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-9: refresh tasks launch while the device is in use and are not terminated by it."""
    probe = Probe(clock, behaviour="hang", expiration="ignore")
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        device.set(idle=True)
        device.set(idle=False)
        await s.settle()
        clock.advance(10)
        await s.settle()
        assert probe.expired_at == []
        assert not handle.completed
        handle.set_task_completed(True)
        assert (await finished(handle)).success is True


# -- BG-10 --------------------------------------------------------------------------------


async def test_bg10_unavailable_when_background_refresh_off(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-10: submit raises Unavailable while background refresh is off for the app."""
    device.set(background_refresh_enabled=False)
    probe = Probe(clock)
    async with running(db, ["r", "p"], clock, device, handlers={"r": probe, "p": probe}) as s:
        with pytest.raises(UnavailableError):
            s.submit(AppRefreshRequest("r"))
        with pytest.raises(UnavailableError):
            s.submit(ProcessingRequest("p"))
        device.set(background_refresh_enabled=True)
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 10))
        device.set(background_refresh_enabled=False)  # turned off while pending: it waits
        clock.advance(10)
        await s.settle()
        assert probe.handles == []
        device.set(background_refresh_enabled=True)
        await probe.launched()


async def test_bg10_immediate_run_ineligible(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-10: a continued-processing request with strategy FAIL that cannot start now raises."""
    probe = Probe(clock, behaviour="hang")
    async with running(db, ["app.export.*"], clock, device, handlers={"app.export.*": probe}) as s:
        s.submit(
            ContinuedProcessingRequest("app.export.1", "Export", strategy=SubmissionStrategy.FAIL)
        )
        await probe.launched()
        with pytest.raises(ImmediateRunIneligibleError):
            s.submit(
                ContinuedProcessingRequest(
                    "app.export.2", "Export", strategy=SubmissionStrategy.FAIL
                )
            )
        assert [r.identifier for r in s.pending_requests()] == []


# -- BG-11 --------------------------------------------------------------------------------


async def test_bg11_cancel_and_cancel_all(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-11: cancel(identifier) and cancel_all() remove pending requests; they never launch."""
    probe = Probe(clock)
    ids = ["r", "p1", "p2"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        s.submit(ProcessingRequest("p1", earliest_begin=T0 + 60))
        s.submit(ProcessingRequest("p2", earliest_begin=T0 + 60))
        s.cancel("p1")
        s.cancel("not-pending")  # no error, as on iOS
        assert [r.identifier for r in s.pending_requests()] == ["r", "p2"]
        s.cancel_all()
        assert s.pending_requests() == []
        device.set(idle=True)
        clock.advance(120)
        await s.settle()
        assert probe.handles == []


async def test_bg11_pending_requests_are_copies(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-11: pending_requests() returns copies; changing them (or the original) does nothing."""
    probe = Probe(clock)
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        submitted = ProcessingRequest("p", earliest_begin=T0 + 60)
        s.submit(submitted)
        submitted.earliest_begin = T0 + 1
        copy = s.pending_requests()[0]
        assert isinstance(copy, ProcessingRequest)
        copy.earliest_begin = T0
        copy.requires_network = True
        copy.identifier = "q"
        assert s.pending_requests() == [ProcessingRequest("p", earliest_begin=T0 + 60)]
        device.set(idle=True, connected=False)
        clock.advance(59)
        await s.settle()
        assert probe.handles == []
        clock.advance(1)
        await probe.launched()


# -- BG-12 --------------------------------------------------------------------------------


async def test_bg12_force_quit_suppresses_launches_until_opened(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-12: after a force-quit nothing launches (running tasks die) until the app is opened."""
    hanging = Probe(clock, behaviour="hang", expiration="ignore")
    probe = Probe(clock)
    async with running(db, ["h", "r"], clock, device, handlers={"h": hanging, "r": probe}) as s:
        s.submit(AppRefreshRequest("h"))
        running_handle = await hanging.launched()
        s.force_quit()
        record = await finished(running_handle)
        assert record.success is False
        assert "force-quit" in record.message
        assert hanging.expired_at == []  # a kill, not an expiration
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        clock.advance(24 * 3600)
        await s.settle()
        assert probe.handles == []
        assert s.force_quit_active
        assert s.pending_reason("r") == "the user force-quit the app"
        s.app_opened()
        handle = await probe.launched()
        assert handle.started_at == T0 + 24 * 3600


# -- BG-13 --------------------------------------------------------------------------------


async def test_bg13_simulate_launch_runs_handler_immediately(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-13: simulate_launch runs the handler now, whatever earliest_begin or the device say."""
    probe = Probe(clock)
    async with running(db, ["p", "q"], clock, device, handlers={"p": probe, "q": probe}) as s:
        s.submit(ProcessingRequest("p", earliest_begin=T0 + 86400, requires_network=True))
        device.set(connected=False)  # and not idle
        handle = s.simulate_launch("p")
        assert await probe.launched() is handle
        assert handle.started_at == T0
        assert s.pending_requests() == []
        assert (await finished(handle)).success is True
        with pytest.raises(UnknownWorkError):
            s.simulate_launch("q")  # declared, but nothing pending
        with pytest.raises(NotPermittedError):
            s.simulate_launch("undeclared")


async def test_bg13_simulate_expiration_fires_expiration_handler(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-13: simulate_expiration fires the running task's expiration handler now."""
    probe = Probe(clock, behaviour="hang", expiration="ignore")
    async with running(db, ["r"], clock, device, handlers={"r": probe}) as s:
        with pytest.raises(UnknownWorkError):
            s.simulate_expiration("r")
        s.submit(AppRefreshRequest("r"))
        handle = await probe.launched()
        clock.advance(1)
        s.simulate_expiration("r")
        assert probe.expired_at == [T0 + 1]
        assert handle.expired
        s.simulate_expiration("r")  # fires once
        assert probe.expired_at == [T0 + 1]
        clock.advance(5)
        record = await finished(handle)
        assert record.success is False
        assert record.message.startswith("simulated expiration")


# -- BG-14 --------------------------------------------------------------------------------


async def test_bg14_deterministic_policy_launches_exactly_at_earliest_begin(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-14: the deterministic test policy launches exactly at earliest_begin."""
    device.set(idle=True)
    probe = Probe(clock)
    ids = ["r", "p1", "p2"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        s.submit(ProcessingRequest("p2", earliest_begin=T0 + 300))
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 17.25))
        s.submit(ProcessingRequest("p1", earliest_begin=T0 + 120))
        for count, at in enumerate((T0 + 17.25, T0 + 120, T0 + 300), start=1):
            clock.set(at)
            handle = await probe.launched(count)
            assert handle.started_at == at
            assert handle.request.earliest_begin == at


class _FixedDelay:
    """A pluggable policy: launch 42 s after earliest_begin, and never on low power."""

    def decide(self, request: BGTaskRequest, context: LaunchContext) -> LaunchDecision:
        if context.device.low_power_mode:
            return LaunchDecision(None, "low power")
        base = request.earliest_begin or context.now
        return LaunchDecision(base + 42, "fixed delay")


async def test_bg14_launch_policy_is_pluggable(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-14: a policy object decides when a pending request launches, from time and device."""
    probe = Probe(clock)
    assert isinstance(_FixedDelay(), LaunchPolicy)
    async with running(db, ["r"], clock, device, policy=_FixedDelay(), handlers={"r": probe}) as s:
        device.set(low_power_mode=True)
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 10))
        clock.advance(100)
        await s.settle()
        assert s.pending_reason("r") == "low power"
        device.set(low_power_mode=False)
        handle = await probe.launched()
        assert handle.started_at == T0 + 100  # T0 + 52 had passed already


@pytest.mark.parametrize(
    ("state", "usage", "request_", "expected"),
    [
        (DeviceState(), AppUsage(), AppRefreshRequest("r"), (T0, "due")),
        (
            DeviceState(charging=False, battery_percent=8),
            AppUsage(),
            AppRefreshRequest("r"),
            (None, "battery critically low"),
        ),
        (
            DeviceState(charging=False, battery_percent=60, low_power_mode=True),
            AppUsage(),
            AppRefreshRequest("r"),
            (None, "Low Power Mode is on"),
        ),
        (
            DeviceState(charging=True, battery_percent=60, low_power_mode=True),
            AppUsage(),
            AppRefreshRequest("r"),
            (T0, "due"),
        ),
        (
            DeviceState(charging=False, battery_percent=18, battery_low=True),
            AppUsage(),
            AppRefreshRequest("r"),
            (None, "battery low"),
        ),
        (
            DeviceState(),
            AppUsage(launch_times=(T0 - 60,)),
            AppRefreshRequest("r"),
            (T0 + 840, "rate limited after the last launch"),
        ),
        (
            DeviceState(),
            AppUsage(launch_times=tuple(T0 - 1800 * (47 - i) for i in range(48))),
            AppRefreshRequest("r"),
            (T0 - 1800 * 47 + USAGE_WINDOW, "daily budget used up"),
        ),
        (
            DeviceState(idle=True),
            AppUsage(app_last_opened=T0 - 8 * 86400),
            ProcessingRequest("p"),
            (None, "the app was not used recently"),
        ),
        (
            DeviceState(idle=True),
            AppUsage(app_last_opened=T0 - 86400),
            ProcessingRequest("p", earliest_begin=T0 + 5),
            (T0 + 5, "waiting for earliest_begin"),
        ),
    ],
)
def test_bg14_opportunistic_policy(
    state: DeviceState,
    usage: AppUsage,
    request_: BGTaskRequest,
    expected: tuple[float | None, str],
) -> None:
    """BG-14: the opportunistic policy defers by battery, Low Power Mode, usage and budget."""
    decision = OpportunisticLaunchPolicy().decide(request_, LaunchContext(T0, state, usage))
    assert (decision.at, decision.reason) == expected


@given(
    begin=st.one_of(st.none(), st.floats(T0 - 1e5, T0 + 1e5)),
    launches=st.lists(st.floats(T0 - 2 * USAGE_WINDOW, T0), max_size=60),
    idle=st.booleans(),
    battery=st.one_of(st.none(), st.floats(0, 100)),
    charging=st.booleans(),
    low_power=st.booleans(),
)
def test_bg14_opportunistic_never_before_earliest_begin(
    begin: float | None,
    launches: list[float],
    idle: bool,
    battery: float | None,
    charging: bool,
    low_power: bool,
) -> None:
    """BG-5/BG-14: whatever the device and usage, the opportunistic policy never says "before"."""
    state = DeviceState(
        idle=idle, battery_percent=battery, charging=charging, low_power_mode=low_power
    )
    context = LaunchContext(T0, state, AppUsage(launch_times=tuple(sorted(launches))))
    for request in (AppRefreshRequest("r", begin), ProcessingRequest("p", begin)):
        decision = OpportunisticLaunchPolicy().decide(request, context)
        if decision.at is not None and begin is not None:
            assert decision.at >= begin


async def test_bg14_opportunistic_policy_in_the_scheduler(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-14: with the opportunistic policy, launches are spaced by the rate limit."""
    holder: list[BGTaskScheduler] = []

    def resubmit(task: BGTaskHandle) -> None:
        holder[0].submit(AppRefreshRequest("r"))

    probe = Probe(clock, on_launch=resubmit)
    policy = OpportunisticLaunchPolicy(min_spacing=600)
    async with running(db, ["r"], clock, device, policy=policy, handlers={"r": probe}) as s:
        holder.append(s)
        s.submit(AppRefreshRequest("r"))
        await finished(await probe.launched())
        await s.settle()
        assert s.pending_reason("r") == "rate limited after the last launch"
        clock.advance(600)
        assert (await probe.launched(2)).started_at == T0 + 600


# -- BG-15 --------------------------------------------------------------------------------


async def test_bg15_continued_processing_wildcard_identifiers(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: continued-processing identifiers fall under a declared wildcard identifier."""
    probe = Probe(clock)
    ids = ["app.export.*", "app.refresh"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        with pytest.raises(NotPermittedError):
            s.submit(ContinuedProcessingRequest("app.import.1", "Import"))
        with pytest.raises(NotPermittedError):
            s.submit(ContinuedProcessingRequest("app.export.*", "Export"))
        with pytest.raises(NotPermittedError):
            s.submit(AppRefreshRequest("app.export.1"))
        with pytest.raises(NotPermittedError):
            s.submit(ContinuedProcessingRequest("app.refresh", "Refresh"))
        s.submit(ContinuedProcessingRequest("app.export.1", "Export"))
        assert (await probe.launched()).identifier == "app.export.1"
    with pytest.raises(InvalidWorkRequestError):
        BGTaskScheduler(db, [".*"])


async def test_bg15_continued_starts_now_ignoring_earliest_begin(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: a continued-processing task starts at once, ignoring earliest_begin and idleness."""
    probe = Probe(clock)
    async with running(db, ["app.export.*"], clock, device, handlers={"app.export.*": probe}) as s:
        s.submit(ContinuedProcessingRequest("app.export.1", "Export", earliest_begin=T0 + 86400))
        handle = await probe.launched()
        assert handle.started_at == T0
        assert handle.budget is None


async def test_bg15_continued_queue_strategy(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: with strategy QUEUE (default) a request waits in FIFO order for a free slot."""
    probe = Probe(clock, behaviour="hang")
    async with running(db, ["app.export.*"], clock, device, handlers={"app.export.*": probe}) as s:
        for n in range(3):
            s.submit(ContinuedProcessingRequest(f"app.export.{n}", "Export"))
        first = await probe.launched()
        assert [r.identifier for r in s.pending_requests()] == ["app.export.1", "app.export.2"]
        await s.settle()
        assert s.pending_reason("app.export.2") == "queued: no continued-processing slot is free"
        first.set_task_completed(True)
        second = await probe.launched(2)
        assert second.identifier == "app.export.1"
        second.set_task_completed(True)
        assert (await probe.launched(3)).identifier == "app.export.2"


async def test_bg15_continued_must_report_progress(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: a continued-processing task that stops reporting progress is expired."""
    probe = Probe(clock, behaviour="hang", expiration="ignore")
    async with running(
        db,
        ["app.export.*"],
        clock,
        device,
        handlers={"app.export.*": probe},
        progress_timeout=60,
    ) as s:
        s.submit(ContinuedProcessingRequest("app.export.1", "Export"))
        handle = await probe.launched()
        for done in range(1, 4):
            clock.advance(50)
            handle.report_progress(done, 10)
            await s.settle()
        handle.report_progress(3, 10)  # no advance: does not count as progress
        assert probe.expired_at == []
        clock.advance(60)
        await probe.wait(lambda: probe.expired_at == [T0 + 210])
        clock.advance(5)
        record = await finished(handle)
        assert record.success is False
        assert "no progress" in record.message


async def test_bg15_continued_cancelled_by_user(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: the user can cancel a running continued-processing task (expiration, then end)."""
    probe = Probe(clock, behaviour="hang", expiration="complete")
    ids = ["app.export.*", "r"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        s.submit(ContinuedProcessingRequest("app.export.1", "Export"))
        handle = await probe.launched()
        s.cancel_by_user("app.export.1")
        record = await finished(handle)
        assert record.success is False
        assert probe.expired_at == [T0]
        with pytest.raises(UnknownWorkError):
            s.cancel_by_user("app.export.1")


async def test_bg15_queued_continued_dropped_on_force_quit(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-15: queued continued-processing requests are dropped when the user force-quits."""
    probe = Probe(clock, behaviour="hang")
    ids = ["app.export.*", "r"]
    async with running(db, ids, clock, device, handlers=dict.fromkeys(ids, probe)) as s:
        s.submit(ContinuedProcessingRequest("app.export.1", "Export"))
        await probe.launched()
        s.submit(ContinuedProcessingRequest("app.export.2", "Export"))
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        s.force_quit()
        assert [r.identifier for r in s.pending_requests()] == ["r"]


# -- the BackgroundSyncTask adapter --------------------------------------------------------


class _Job:
    """A BackgroundSyncTask that hangs until cancelled, or returns a given result."""

    def __init__(self, result: bool | TaskResult | None) -> None:
        self.result = result
        self.events: list[str] = []
        self.started = anyio.Event()

    @property
    def task_id(self) -> str:
        return "job"

    async def execute(self, context: TaskContext) -> bool | TaskResult:
        self.started.set()
        assert context.run_attempt_count == 0
        await context.set_progress({"done": 1, "total": 2})
        if self.result is not None:
            return self.result
        try:
            await anyio.sleep_forever()
        finally:
            self.events.append(f"cancelled, stopped={context.is_stopped}")
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("result", "success", "message"),
    [
        (True, True, "job: success"),
        (False, False, "job: failure"),
        (TaskResult.success(message="all sent"), True, "all sent"),
        (TaskResult.retry(), False, "job: retry (no automatic retry: resubmit to run again)"),
    ],
)
async def test_bg08_background_sync_task_adapter_results(
    db: Database,
    clock: FakeClock,
    device: SimulatedDevice,
    result: bool | TaskResult,
    success: bool,
    message: str,
) -> None:
    """BG-8: a BackgroundSyncTask result becomes set_task_completed(success); RETRY fails."""
    job = _Job(result)
    async with running(db, ["r"], clock, device, handlers={"r": handler_for_task(job)}) as s:
        s.submit(AppRefreshRequest("r"))
        with anyio.fail_after(WAIT):
            while not s.history() or s.history()[0].success is None:
                await s.settle()
        record = s.history()[0]
        assert (record.success, record.message) == (success, message)


async def test_bg07_background_sync_task_adapter_cancels_on_expiration(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-7/BG-8: on expiration the adapted task's run is cancelled; the launch is unsuccessful."""
    job = _Job(None)
    records: list[LaunchRecord] = []
    async with running(db, ["r"], clock, device, handlers={"r": handler_for_task(job)}) as s:
        s.subscribe(records.append)
        s.submit(AppRefreshRequest("r"))
        with anyio.fail_after(WAIT):
            await job.started.wait()
        handle = s.running_task("r")
        assert handle is not None
        assert handle.progress == (1, 2)
        assert handle.progress_data == {"done": 1, "total": 2}
        clock.advance(25)
        record = await finished(handle)
    assert job.events == ["cancelled, stopped=True"]
    assert record.success is False
    assert record.duration == 25.0  # ended at the expiration, before the budget ran out
    assert "stopped: time expired" in record.message
    assert [r.success for r in records] == [None, False]


# -- waking: device notifications, no busy polling -----------------------------------------


async def test_bg09_device_change_from_another_thread_wakes_the_scheduler(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """BG-9: a device that becomes idle, reported from another thread, releases processing work."""
    probe = Probe(clock)
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        s.submit(ProcessingRequest("p"))
        await s.settle()
        assert probe.handles == []
        with anyio.fail_after(WAIT):
            await anyio.to_thread.run_sync(lambda: device.set(idle=True))
        await probe.launched()


async def test_idle_scheduler_sets_no_timers(
    db: Database, clock: FakeClock, device: SimulatedDevice
) -> None:
    """With nothing due, or only work waiting on a notifying device, the loop sets no timer."""
    probe = Probe(clock)
    async with running(db, ["p"], clock, device, handlers={"p": probe}) as s:
        await s.settle()
        assert clock.next_deadline() is None
        s.submit(ProcessingRequest("p"))  # waits for idle: a device notification, not a timer
        await s.settle()
        assert clock.next_deadline() is None


class _PolledDevice:
    """A device provider without ``subscribe`` (like the real probes)."""

    def __init__(self) -> None:
        self.state = DeviceState()

    def current(self) -> DeviceState:
        return self.state


async def test_device_without_notifications_is_polled(db: Database, clock: FakeClock) -> None:
    """A provider that cannot notify is polled every device_poll_interval, only while needed."""
    device = _PolledDevice()
    probe = Probe(clock)
    scheduler = BGTaskScheduler(
        db,
        ["p"],
        clock=clock,
        device=device,
        policy=DeterministicLaunchPolicy(),
        handlers={"p": probe},
        device_poll_interval=30,
    )
    with anyio.fail_after(WAIT):
        async with scheduler as s:
            await s.settle()
            assert clock.next_deadline() is None
            s.submit(ProcessingRequest("p"))
            await s.settle()
            assert clock.next_deadline() == T0 + 30
            device.state = DeviceState(idle=True)
            clock.advance(30)
            handle = await probe.launched()
            assert handle.started_at == T0 + 30
