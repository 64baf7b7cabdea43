"""The background sync service on the WorkManager-like adapter, with a FakeClock and a
SimulatedDevice, syncing a real store to a MemoryBackend (the server core in process)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import LifecycleError, NetworkError, NexusStore, SyncPriority
from nexus_store.backends import Changes, PushResult, RemoteBackend, RemoteOp
from nexus_store.backends._memory import MemoryBackend
from nexus_store.cli import app
from nexus_store.queue import OpState
from nexus_store.sync import (
    BackgroundSyncConfig,
    BackgroundSyncService,
    BackgroundSyncStatus,
    ScheduleResult,
    ServiceState,
    SyncEvent,
    TaskContext,
    TaskResult,
    WorkManagerSyncService,
)
from nexus_store.sync._store_task import SYNC_TASK_ID
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.workmanager import WorkQuery, WorkState
from nexus_store.sync.workmanager._adapter import CRITICAL_WORK, HIGH_WORK, PERIODIC_WORK
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio

S = BackgroundSyncStatus
INTERVAL = timedelta(minutes=15)


class Note(BaseModel):
    id: str
    text: str = ""


class Recorder:
    """Collects statuses and events through callbacks; waits on them without sleeping."""

    def __init__(self, service: BackgroundSyncService) -> None:
        self.statuses: list[BackgroundSyncStatus] = []
        self.events: list[SyncEvent] = []
        self._changed = anyio.Event()
        service.statuses.add_callback(self._on_status)
        service.events.add_callback(self._on_event)

    def _on_status(self, status: BackgroundSyncStatus) -> None:
        self.statuses.append(status)
        self._poke()

    def _on_event(self, event: SyncEvent) -> None:
        self.events.append(event)
        self._poke()

    def _poke(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def sync_events(self) -> list[SyncEvent]:
        return [e for e in self.events if e.task_id == SYNC_TASK_ID]

    async def until(self, predicate: Callable[[], bool], limit: float = 10.0) -> None:
        with anyio.fail_after(limit):
            while not predicate():
                await self._changed.wait()

    async def runs(self, count: int) -> None:
        """Wait until ``count`` sync runs have finished (and the status settled after them)."""
        await self.until(lambda: len(self.sync_events()) >= count)


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


class Down(RemoteBackend):
    """A remote that cannot be reached."""

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        raise NetworkError("connection refused")

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        raise NetworkError("connection refused")


class Cleanup:
    """An app job counting its runs."""

    task_id = "app.cleanup"

    def __init__(self) -> None:
        self.runs = 0

    async def execute(self, context: TaskContext) -> TaskResult:
        self.runs += 1
        return TaskResult.success({"removed": 3}, message="removed 3 files")


def make_store(
    clock: FakeClock, path: str | Path = ":memory:", backend: RemoteBackend | None = None
) -> NexusStore[Note, str]:
    # A backend the test passes in outlives the store (it is shared by the test's stores).
    return NexusStore(
        path,
        model=Note,
        clock=clock,
        backend=backend or MemoryBackend(),
        owns_backend=backend is None,
    )


def make_service(
    store: NexusStore[Note, str],
    clock: FakeClock,
    device: SimulatedDevice | None = None,
    **config: Any,
) -> WorkManagerSyncService:
    return WorkManagerSyncService(
        store,
        config=BackgroundSyncConfig(**config),
        clock=clock,
        device=device or SimulatedDevice(),
    )


async def settled_work(service: WorkManagerSyncService, name: str, state: WorkState) -> list[Any]:
    """Wait until the work under unique name ``name`` is in ``state`` (as recorded)."""
    query = WorkQuery(unique_names=frozenset({name}))
    with anyio.fail_after(10):
        async with service.manager.subscribe(query) as watch:
            async for infos in watch:
                if infos and all(info.state is state for info in infos):
                    return infos
    raise AssertionError("the manager closed")


async def server_head(store: NexusStore[Note, str]) -> int:
    backend = store.backend
    assert isinstance(backend, MemoryBackend)
    return await backend.core.head("default")


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock for the test."""
    return FakeClock()


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[NexusStore[Note, str]]:
    """An in-memory store syncing to an in-process server."""
    with make_store(clock) as created:
        yield created


# -- lifecycle ---------------------------------------------------------------------------------


async def test_methods_refuse_before_start_and_after_stop(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """Using the service outside `async with` raises LifecycleError; it cannot run twice."""
    service = make_service(store, clock)
    assert service.state is ServiceState.UNSTARTED
    assert (
        await service.why_not_running() == "the service is not started (use `async with service:`)"
    )
    for call in (service.schedule_sync, service.cancel_sync, service.sync_now, service.settle):
        with pytest.raises(LifecycleError, match="not started"):
            await call()
    async with service:
        assert service.state.value == "running"
        with pytest.raises(LifecycleError, match="before starting"):
            service.register_task(Cleanup())
        with pytest.raises(LifecycleError, match="runs once"):
            await service.__aenter__()
    assert service.state.value == ServiceState.STOPPED.value
    with pytest.raises(LifecycleError, match="stopped"):
        await service.request_sync(SyncPriority.CRITICAL)
    with pytest.raises(LifecycleError, match="runs once"):
        async with service:
            pass
    assert await service.why_not_running() == "the service is stopped"


async def test_status_stream_ends_when_the_service_stops(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """A status subscription replays the current status and ends when the service stops."""
    service = make_service(store, clock)
    stream = service.status_stream
    async with service:
        pass
    with anyio.fail_after(5):
        seen = [status async for status in stream]
    assert seen == [S.IDLE]


async def test_every_subscriber_sees_every_transition_in_order(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """Two subscribers both see IDLE, SCHEDULED, RUNNING, COMPLETED, SCHEDULED, then IDLE."""
    service = make_service(store, clock)
    first, second = service.status_stream, service.status_stream
    recorder = Recorder(service)
    store.save(Note(id="n1"))
    async with service:
        assert await service.schedule_sync() is ScheduleResult.ACCEPTED
        # A flex-less periodic work runs at once the first time (WM-8), then every interval.
        await recorder.until(
            lambda: recorder.statuses[-1:] == [S.SCHEDULED] and len(recorder.statuses) >= 4
        )
        await service.cancel_sync()
    expected = [S.IDLE, S.SCHEDULED, S.RUNNING, S.COMPLETED, S.SCHEDULED, S.IDLE]
    with anyio.fail_after(5):
        assert [s async for s in first] == expected
        assert [s async for s in second] == expected
    assert await server_head(store) == 1


# -- priorities drive timing -------------------------------------------------------------------


async def test_critical_save_requests_an_expedited_run_at_once(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """A CRITICAL save starts an expedited one-time run without waiting for the clock."""
    service = make_service(store, clock)
    recorder = Recorder(service)
    async with service:
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        await recorder.runs(1)
        infos = await settled_work(service, CRITICAL_WORK, WorkState.SUCCEEDED)
        assert [info.expedited for info in infos] == [True]
        assert not store.is_pending("urgent")
        history = await service.run_history(SYNC_TASK_ID)
        assert [run.outcome for run in history] == ["success"]
    assert await server_head(store) == 1


async def test_high_saves_debounce_into_one_run(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """HIGH saves wait high_priority_debounce; a burst meanwhile is sent by one run."""
    service = make_service(store, clock, high_priority_debounce=timedelta(seconds=5))
    recorder = Recorder(service)
    async with service:
        for i in range(5):
            store.save(Note(id=f"h{i}"), priority=SyncPriority.HIGH)
            await service.settle()
            clock.advance(0.5)
        await service.settle()
        assert "debouncing HIGH saves until" in await service.why_not_running()
        assert recorder.sync_events() == []
        assert len(await service.manager.get_work_infos_for_unique_work(HIGH_WORK)) == 1
        clock.advance(5)
        await recorder.runs(1)
        summary = recorder.sync_events()[0].summary
        assert summary is not None
        assert summary.pushed == 5
    assert await server_head(store) == 5


async def test_normal_saves_wait_for_the_periodic_run(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """NORMAL ops go with the periodic run, every min_interval after the previous one."""
    service = make_service(store, clock)
    recorder = Recorder(service)
    async with service:
        await service.schedule_sync()
        await recorder.runs(1)  # the first periodic run is immediate
        store.save(Note(id="normal"))
        await service.settle()
        assert store.is_pending("normal")
        why = await service.why_not_running()
        assert why.startswith("next periodic run at 2023-11-14T22:28:20Z"), why
        clock.advance(INTERVAL.total_seconds() - 1)
        await service.settle()
        assert store.is_pending("normal")
        clock.advance(1)
        await recorder.runs(2)
        assert not store.is_pending("normal")


async def test_low_ops_wait_while_the_network_is_metered(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """On a metered network a CRITICAL run leaves LOW ops queued; they go once unmetered."""
    device = SimulatedDevice(metered=True)
    service = make_service(store, clock, device)
    recorder = Recorder(service)
    async with service:
        await service.schedule_sync()
        await recorder.runs(1)
        store.save(Note(id="low"), priority=SyncPriority.LOW)
        store.save(Note(id="crit"), priority=SyncPriority.CRITICAL)
        await recorder.runs(2)
        assert not store.is_pending("crit")
        assert store.is_pending("low")
        device.set(metered=False)
        clock.advance(INTERVAL.total_seconds())
        await recorder.runs(3)
        assert not store.is_pending("low")


async def test_why_not_running_names_unmet_constraints(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """Offline and not charging: the answer names both, and the periodic run waits."""
    device = SimulatedDevice(connected=False, charging=False)
    service = make_service(store, clock, device, requires_charging=True)
    async with service:
        assert await service.why_not_running() == (
            "offline; charging: the device is not charging; not scheduled: call schedule_sync()"
            " (CRITICAL and HIGH saves ask for runs)"
        )
        await service.schedule_sync()
        await service.settle()
        why = await service.why_not_running()
        assert why.startswith("offline; charging: the device is not charging; periodic run is due:")
        assert "constraint_connectivity" in why
        assert await service.run_history() == []
        device.set(connected=True, charging=True)
        recorder = Recorder(service)
        await recorder.runs(1)


# -- running, cancelling, failing --------------------------------------------------------------


async def test_cancel_sync_stops_a_run_and_gives_its_ops_back(clock: FakeClock) -> None:
    """cancel_sync() stops a run mid-push; its leased ops are pending again; status IDLE."""
    gate = Gate(MemoryBackend())
    with make_store(clock, backend=gate) as store:
        service = make_service(store, clock)
        recorder = Recorder(service)
        async with service:
            for i in range(10):
                store.save(Note(id=f"n{i}"))
            await service.schedule_sync()
            with anyio.fail_after(5):
                await gate.entered.wait()
            assert store.queue.stats().leased == 10
            await service.cancel_sync()
            stats = store.queue.stats()
            assert (stats.leased, stats.count(state=OpState.PENDING)) == (0, 10)
            assert recorder.statuses[-3:] == [S.RUNNING, S.FAILED, S.IDLE]
            infos = await service.manager.get_work_infos(WorkQuery(tags={SYNC_TASK_ID}))
            assert {i.state for i in infos} == {WorkState.CANCELLED}
            assert "not scheduled" in await service.why_not_running()


async def test_unreachable_remote_fails_and_backs_off(clock: FakeClock) -> None:
    """A run that cannot reach the remote ends FAILED and pauses the remote (the op is not
    charged); the service runs again when the pause ends, not after the scheduler's backoff."""
    with make_store(clock, backend=Down()) as store:
        service = make_service(store, clock, backoff_delay=timedelta(seconds=30))
        recorder = Recorder(service)
        async with service:
            store.save(Note(id="x"), priority=SyncPriority.CRITICAL)
            await recorder.runs(1)
            assert S.FAILED in recorder.statuses
            assert recorder.sync_events()[0].success is False
            await service.settle()
            why = await service.why_not_running()
            assert "the remote is paused (unavailable) until" in why, why
            clock.advance(4.001)  # past the longest probe backoff
            await recorder.runs(2)
            await service.settle()
            runs = await service.run_history(SYNC_TASK_ID)
            assert [r.outcome for r in runs] == ["failure", "failure"]
            [op] = store.queue.pending()
            assert op.attempts == 0


async def test_sync_now_runs_whatever_the_schedule(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """sync_now() sends everything now, offline schedule or not, and returns the summary."""
    service = make_service(store, clock, requires_charging=True)
    recorder = Recorder(service)
    async with service:
        store.save_many([Note(id=f"n{i}") for i in range(20)], priority=SyncPriority.LOW)
        summary = await service.sync_now()
        assert summary.pushed == 20
        assert service.last_summary == summary
        assert recorder.statuses == [S.RUNNING, S.COMPLETED]
    assert await server_head(store) == 20


async def test_a_run_that_cannot_send_is_not_asked_for_again(clock: FakeClock) -> None:
    """An eligible CRITICAL op of a collection the service does not sync starts one run, not
    a loop of runs; a new save starts the next."""
    backend = MemoryBackend()
    with make_store(clock, backend=backend) as store:
        other: NexusStore[Note, str] = NexusStore(
            store.database, model=Note, collection="other", clock=clock
        )
        service = make_service(store, clock)
        recorder = Recorder(service)
        async with service:
            other.save(Note(id="elsewhere"), priority=SyncPriority.CRITICAL)
            await service.request_sync(SyncPriority.CRITICAL)
            await recorder.runs(1)
            for _ in range(5):
                await service.settle()
            assert len(recorder.sync_events()) == 1
            store.save(Note(id="mine"), priority=SyncPriority.CRITICAL)
            await recorder.runs(2)
            for _ in range(5):
                await service.settle()
            assert len(recorder.sync_events()) == 2
            assert other.is_pending("elsewhere")


# -- configuration, restart, app tasks ---------------------------------------------------------


async def test_initialize_updates_the_periodic_work_in_place(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """initialize(config) changes the scheduled periodic work (UPDATE: same id, new spec)."""
    service = make_service(store, clock)
    async with service:
        await service.schedule_sync()
        before = await service.manager.get_work_infos_for_unique_work(PERIODIC_WORK)
        await service.initialize(BackgroundSyncConfig(min_interval=timedelta(hours=2)))
        after = await service.manager.get_work_infos_for_unique_work(PERIODIC_WORK)
        assert [i.id for i in after] == [i.id for i in before]
        assert after[0].interval == 7200
        assert after[0].generation == before[0].generation + 1
        await service.initialize(BackgroundSyncConfig(enabled=False))
        assert service.status is S.IDLE
        assert await service.schedule_sync() is ScheduleResult.UNSUPPORTED


async def test_min_interval_under_the_floor_is_clamped_unless_the_floor_is_lowered(
    store: NexusStore[Note, str], clock: FakeClock
) -> None:
    """A 1-minute interval becomes 15 minutes (WM-1) unless min_periodic_floor allows it."""
    for floor, expected in ((timedelta(minutes=15), 900.0), (timedelta(seconds=30), 60.0)):
        with make_store(clock) as fresh:
            service = make_service(
                fresh, clock, min_interval=timedelta(minutes=1), min_periodic_floor=floor
            )
            async with service:
                await service.schedule_sync()
                infos = await service.manager.get_work_infos_for_unique_work(PERIODIC_WORK)
                assert infos[0].interval == expected


async def test_a_restart_resumes_the_schedule(clock: FakeClock, tmp_path: Path) -> None:
    """After a restart, schedule_sync() keeps the next run time and the queue resumes."""
    path = tmp_path / "app.db"
    backend = MemoryBackend()
    with make_store(clock, path, backend) as store:
        service = make_service(store, clock)
        recorder = Recorder(service)
        async with service:
            await service.schedule_sync()
            await recorder.runs(1)
        store.save(Note(id="later"))
    first_run_end = clock.now()
    clock.advance(300)
    with make_store(clock, path, backend) as store:
        service = make_service(store, clock)
        recorder = Recorder(service)
        async with service:
            assert service.status is S.SCHEDULED  # the periodic work was in the file
            await service.schedule_sync()
            infos = await service.manager.get_work_infos_for_unique_work(PERIODIC_WORK)
            assert infos[0].next_schedule_time == first_run_end + INTERVAL.total_seconds()
            assert store.is_pending("later")
            clock.advance(INTERVAL.total_seconds() - 300)
            await recorder.runs(1)
            assert not store.is_pending("later")
            assert len(await service.run_history(SYNC_TASK_ID)) == 2


async def test_app_tasks_run_under_the_scheduler_with_a_persisted_history(
    clock: FakeClock, tmp_path: Path
) -> None:
    """A registered job runs periodically, publishes events, and its history survives."""
    path = tmp_path / "app.db"
    job = Cleanup()
    with make_store(clock, path) as store:
        service = make_service(store, clock)
        service.register_task(job, interval=timedelta(hours=1))
        with pytest.raises(ValueError, match="already registered"):
            service.register_task(job)
        with pytest.raises(ValueError, match="reserved"):
            service.register_task(_Named(SYNC_TASK_ID))
        recorder = Recorder(service)
        async with service:
            await recorder.until(lambda: any(e.task_id == "app.cleanup" for e in recorder.events))
            await settled_work(service, "app.cleanup", WorkState.ENQUEUED)
            clock.advance(3600)
            await recorder.until(
                lambda: sum(e.task_id == "app.cleanup" for e in recorder.events) == 2
            )
            assert job.runs == 2
            assert recorder.events[-1].message == "removed 3 files"
            await settled_work(service, "app.cleanup", WorkState.ENQUEUED)
    with make_store(clock, path) as store:
        service = make_service(store, clock)
        service.register_task(job, interval=timedelta(hours=1))
        async with service:
            history = await service.run_history("app.cleanup")
            assert [r.outcome for r in history] == ["success", "success"]
            assert all(r.task_id == "app.cleanup" for r in history)
    listed = CliRunner().invoke(app, ["jobs", "--db", str(path)])
    assert listed.exit_code == 0, listed.output
    assert "app.cleanup" in listed.output  # the job and its runs, as `nexus-store jobs` shows them
    assert "success" in listed.output


class _Named:
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    async def execute(self, context: TaskContext) -> bool:
        return True


async def test_a_run_cut_short_by_shutdown_runs_again_at_once(
    clock: FakeClock, tmp_path: Path
) -> None:
    """Stopping the service mid-run gives the ops back; after a restart the CRITICAL ops go
    at once, not after a backoff delay counted from the stopped run's old enqueue time."""
    path = tmp_path / "app.db"
    server = MemoryBackend()
    gate = Gate(server)
    with make_store(clock, path, gate) as store:
        service = make_service(store, clock)
        async with service:
            store.save_many([Note(id=f"n{i}") for i in range(5)], priority=SyncPriority.CRITICAL)
            with anyio.fail_after(5):
                await gate.entered.wait()
        assert store.queue.stats().leased == 0
    clock.advance(1)
    with make_store(clock, path, server) as store:
        service = make_service(store, clock)
        recorder = Recorder(service)
        async with service:
            await recorder.runs(1)
            assert store.queue.stats().live == 0
            infos = await settled_work(service, CRITICAL_WORK, WorkState.SUCCEEDED)
            assert len(infos) == 1
            history = await service.run_history(SYNC_TASK_ID)
            assert [r.outcome for r in history] == ["success", "stopped"]
    assert await server.core.head("default") == 5
