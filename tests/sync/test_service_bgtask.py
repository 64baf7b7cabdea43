"""The background sync service on the BGTask-like adapter (iOS): one-shot refresh requests
resubmitted by each launch, priorities moving the next launch, budgets and expiration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import LifecycleError, NexusStore, SyncPriority
from nexus_store.backends import Changes, PushResult, RemoteBackend, RemoteOp
from nexus_store.backends._memory import MemoryBackend
from nexus_store.queue import OpState
from nexus_store.sync import (
    BackgroundSyncConfig,
    BackgroundSyncService,
    BGTaskSyncService,
    ScheduleResult,
    SyncEvent,
    TaskContext,
)
from nexus_store.sync._store_task import SYNC_TASK_ID
from nexus_store.sync.bgtask import AppRefreshRequest, DeterministicLaunchPolicy, ProcessingRequest
from nexus_store.sync.bgtask._adapter import PROCESSING_IDENTIFIER, REFRESH_IDENTIFIER
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio

INTERVAL = 900.0


class Note(BaseModel):
    id: str


class Events:
    """Collects run events; waits on them without sleeping."""

    def __init__(self, service: BackgroundSyncService) -> None:
        self.items: list[SyncEvent] = []
        self._changed = anyio.Event()
        service.events.add_callback(self._on_event)

    def _on_event(self, event: SyncEvent) -> None:
        self.items.append(event)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def of(self, task_id: str = SYNC_TASK_ID) -> list[SyncEvent]:
        return [e for e in self.items if e.task_id == task_id]

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await self._changed.wait()


class Gate(RemoteBackend):
    """Waits inside push (before the server sees it) until opened."""

    def __init__(self, inner: RemoteBackend) -> None:
        self.inner = inner
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        self.entered.set()
        await self.opened.wait()
        return await self.inner.push(ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


class Counter:
    """An app job counting its runs."""

    task_id = "app.fetch"

    def __init__(self) -> None:
        self.runs = 0

    async def execute(self, context: TaskContext) -> bool:
        self.runs += 1
        return True


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock for the test."""
    return FakeClock()


@pytest.fixture
def device() -> SimulatedDevice:
    """A connected device in use (processing tasks wait for idle)."""
    return SimulatedDevice(idle=False)


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[NexusStore[Note, str]]:
    """An in-memory store syncing to an in-process server."""
    created: NexusStore[Note, str] = NexusStore(
        ":memory:", model=Note, clock=clock, backend=MemoryBackend()
    )
    with created:
        yield created


def make_service(
    store: NexusStore[Note, str],
    clock: FakeClock,
    device: SimulatedDevice,
    *,
    backend: RemoteBackend | None = None,
    options: dict[str, Any] | None = None,
    **config: Any,
) -> BGTaskSyncService:
    return BGTaskSyncService(
        store,
        backend,
        config=BackgroundSyncConfig(**config),
        clock=clock,
        device=device,
        launch_policy=DeterministicLaunchPolicy(),
        **(options or {}),
    )


def pending(service: BGTaskSyncService) -> dict[str, float | None]:
    return {r.identifier: r.earliest_begin for r in service.scheduler.pending_requests()}


async def test_refresh_is_resubmitted_one_interval_after_each_launch(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """schedule_sync asks for a refresh one interval ahead; each launch asks for the next
    (BG-6); NORMAL saves wait for it (BG-5: never before earliest_begin)."""
    service = make_service(store, clock, device)
    events = Events(service)
    t0 = clock.now()
    async with service:
        assert await service.schedule_sync() is ScheduleResult.ACCEPTED
        assert pending(service) == {REFRESH_IDENTIFIER: t0 + INTERVAL}
        store.save(Note(id="n1"))
        await service.settle()
        clock.advance(INTERVAL - 1)
        await service.settle()
        assert store.is_pending("n1")
        assert events.of() == []
        assert "next app-refresh launch not before 2023-11-14T22:28:20Z" in (
            await service.why_not_running()
        )
        clock.advance(1)
        await events.until(lambda: len(events.of()) == 1)
        assert not store.is_pending("n1")
        assert pending(service) == {REFRESH_IDENTIFIER: t0 + 2 * INTERVAL}
        # The run's event comes from the run itself; the launch's end is recorded when
        # its handler has returned, a few steps later.
        with anyio.fail_after(5):
            while (history := await service.run_history(SYNC_TASK_ID))[0].outcome == "running":
                await service.settle()
                await anyio.sleep(0.01)
        assert [(r.outcome, r.source) for r in history] == [
            ("success", f"{REFRESH_IDENTIFIER} (app_refresh)")
        ]


async def test_critical_save_moves_the_refresh_to_now(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """A CRITICAL save resubmits the refresh with earliest_begin = now: it launches at once."""
    service = make_service(store, clock, device)
    events = Events(service)
    async with service:
        await service.schedule_sync()
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        await events.until(lambda: len(events.of()) == 1)
        assert not store.is_pending("urgent")
        await service.settle()
        assert pending(service) == {REFRESH_IDENTIFIER: clock.now() + INTERVAL}


async def test_high_saves_move_the_refresh_to_the_debounce(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """A HIGH save asks for a launch after the debounce; later HIGH saves do not push it back."""
    service = make_service(store, clock, device, high_priority_debounce=timedelta(seconds=3))
    events = Events(service)
    t0 = clock.now()
    async with service:
        store.save(Note(id="h1"), priority=SyncPriority.HIGH)
        await service.settle()
        assert pending(service) == {REFRESH_IDENTIFIER: t0 + 3}
        clock.advance(2)
        store.save(Note(id="h2"), priority=SyncPriority.HIGH)
        await service.settle()
        assert pending(service) == {REFRESH_IDENTIFIER: t0 + 3}
        clock.advance(1)
        await events.until(lambda: len(events.of()) == 1)
        summary = events.of()[0].summary
        assert summary is not None
        assert summary.pushed == 2
        await service.settle()
        assert pending(service) == {}  # no periodic schedule: nothing resubmitted


async def test_expiration_cancels_the_run_and_its_ops_go_back(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """The expiration handler (here simulated, BG-13) stops the run: leased ops are pending
    again, the launch is recorded unsuccessful, and nothing retries it (BG-8)."""
    gate = Gate(MemoryBackend())
    service = make_service(store, clock, device, backend=gate)
    async with service:
        await service.schedule_sync()
        store.save_many([Note(id=f"n{i}") for i in range(10)])
        handle = service.simulate_launch()
        with anyio.fail_after(5):
            await gate.entered.wait()
        assert store.queue.stats().leased == 10
        service.simulate_expiration()
        with anyio.fail_after(5):
            record = await handle.wait_finished()
        assert record.success is False
        assert record.message.startswith("expired: the sync run was stopped")
        stats = store.queue.stats()
        assert (stats.leased, stats.count(state=OpState.PENDING)) == (0, 10)
        assert pending(service) == {REFRESH_IDENTIFIER: clock.now() + INTERVAL}


async def test_a_run_out_of_budget_asks_for_a_processing_launch(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """A refresh run ends by its own budget before expiry; the backlog then gets a
    processing request (which waits for an idle device, BG-9)."""
    gate = Gate(MemoryBackend())
    service = make_service(
        store, clock, device, backend=gate, options={"refresh_budget": 10, "expiration_lead": 2}
    )
    events = Events(service)
    async with service:
        store.save_many([Note(id=f"n{i}") for i in range(5)])
        await service.request_sync(SyncPriority.CRITICAL)
        with anyio.fail_after(5):
            await gate.entered.wait()
        clock.advance(7.2)  # the run's budget: 90 % of the 8 s before expiration
        await events.until(lambda: len(events.of()) == 1)
        summary = events.of()[0].summary
        assert summary is not None
        assert summary.stop_reason.value == "budget"
        assert store.queue.stats().leased == 0
        await service.settle()
        assert PROCESSING_IDENTIFIER in pending(service)
        assert "processing launch (backlog) is due: the device is in use" in (
            await service.why_not_running()
        )
        gate.opened.set()
        device.set(idle=True)
        await events.until(lambda: len(events.of()) == 2)
        assert store.queue.stats().live == 0


async def test_a_large_backlog_gets_a_processing_request(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice
) -> None:
    """At least backlog_threshold live ops when scheduling: a processing request needing a
    network (and external power when the config requires charging, BG-2)."""
    service = make_service(
        store, clock, device, requires_charging=True, options={"backlog_threshold": 5}
    )
    async with service:
        store.save_many([Note(id=f"n{i}") for i in range(5)])
        await service.schedule_sync()
        requests = {r.identifier: r for r in service.scheduler.pending_requests()}
        processing = requests[PROCESSING_IDENTIFIER]
        assert isinstance(processing, ProcessingRequest)
        assert processing.requires_network
        assert processing.requires_external_power
        assert isinstance(requests[REFRESH_IDENTIFIER], AppRefreshRequest)


async def test_background_refresh_off_is_an_os_refusal(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """With background refresh off (BG-10) scheduling answers REJECTED_OS_POLICY."""
    device = SimulatedDevice(background_refresh_enabled=False)
    service = make_service(store, clock, device)
    async with service:
        assert await service.schedule_sync() is ScheduleResult.REJECTED_OS_POLICY
        assert await service.request_sync(SyncPriority.CRITICAL) is (
            ScheduleResult.REJECTED_OS_POLICY
        )
        assert service.scheduler.pending_requests() == []


async def test_a_launch_with_unmet_constraints_does_not_run(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """App-refresh requests have no constraints (BG-2): the config's are checked at launch."""
    device = SimulatedDevice(charging=False, battery_percent=50)
    service = make_service(store, clock, device, requires_charging=True)
    async with service:
        await service.schedule_sync()
        store.save(Note(id="n1"))
        handle = service.simulate_launch()
        with anyio.fail_after(5):
            record = await handle.wait_finished()
        assert (record.success, record.message) == (
            False,
            "constraints unmet: charging: the device is not charging",
        )
        assert store.is_pending("n1")


async def test_app_tasks_are_processing_requests_resubmitted_by_their_handler(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """A registered job is declared (BG-1), runs as a processing task while idle, and asks
    for its next run itself."""
    device = SimulatedDevice(idle=True)
    job = Counter()
    service = make_service(store, clock, device)
    service.register_task(job, interval=timedelta(hours=2), constrained=False)
    events = Events(service)
    async with service:
        await events.until(lambda: len(events.of("app.fetch")) == 1)
        await service.settle()
        assert pending(service) == {"app.fetch": clock.now() + 7200}
        clock.advance(7200)
        await events.until(lambda: len(events.of("app.fetch")) == 2)
        await service.settle()
        history = await service.run_history("app.fetch")
        assert [r.outcome for r in history] == ["success", "success"]
        with pytest.raises(LifecycleError):
            service.register_task(Counter())
    assert job.runs == 2
