"""Jobs people steer: definitions, enable/disable across restarts, run now, the history."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority, UnknownWorkError
from nexus_store._database import Database
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import (
    BackgroundSyncConfig,
    JobConstraints,
    JobDefinition,
    NetworkType,
    OneTimeSchedule,
    PeriodicSchedule,
    TaskContext,
    TaskResult,
    WorkManagerSyncService,
)
from nexus_store.sync._jobs import SYNC_JOB, JobTable
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.workmanager import WorkQuery, WorkState
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    id: str
    text: str = ""


class Counter:
    """A job callback that counts its runs and answers with scripted results."""

    def __init__(self, *results: TaskResult) -> None:
        self.runs = 0
        self.results = list(results)
        self.ran = anyio.Event()

    async def __call__(self, context: TaskContext) -> TaskResult:
        self.runs += 1
        self.ran.set()
        self.ran = anyio.Event()
        return self.results.pop(0) if self.results else TaskResult.success(message="done")

    async def wait(self, runs: int) -> None:
        with anyio.fail_after(10):
            while self.runs < runs:
                await self.ran.wait()


def service_for(
    store: NexusStore[Note, str], clock: FakeClock, device: SimulatedDevice, *jobs: JobDefinition
) -> WorkManagerSyncService:
    service = WorkManagerSyncService(
        store, config=BackgroundSyncConfig(), clock=clock, device=device
    )
    for job in jobs:
        service.register_job(job)
    return service


async def wait_history(service: WorkManagerSyncService, job_id: str, count: int) -> list:
    with anyio.fail_after(10):
        while True:
            runs = [r for r in await service.job_history(job_id) if r.ended_at is not None]
            if len(runs) >= count:
                return runs
            await service.settle()


@pytest.fixture
def store(tmp_path: Path) -> NexusStore[Note, str]:
    """A store in a file (switches must survive a restart)."""
    return NexusStore(tmp_path / "app.db", model=Note, backend=MemoryBackend(), clock=FakeClock())


async def test_success_message_is_kept_in_the_history(store: NexusStore[Note, str]) -> None:
    """A job's success message, its attempt and duration land in the saved history."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter(TaskResult.success(message="removed 3 files"))
    job = JobDefinition(id="app.cleanup", name="Cleanup", callback=callback)
    async with service_for(store, clock, SimulatedDevice(), job) as service:
        await callback.wait(1)
        (run,) = await wait_history(service, "app.cleanup", 1)
    assert run.outcome == "success"
    assert run.message == "removed 3 files"
    assert run.attempt == 0
    assert run.duration is not None
    assert run.ended_at is not None
    assert run.stop_reason is None


async def test_failure_error_and_retry_are_recorded(store: NexusStore[Note, str]) -> None:
    """failure(error=...) keeps the error; retry is recorded with its attempt count."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter(TaskResult.retry("busy"), TaskResult.failure(error="disk full"))
    job = JobDefinition(id="app.fetch", name="Fetch", callback=callback)
    async with service_for(store, clock, SimulatedDevice(), job) as service:
        await callback.wait(1)
        await wait_history(service, "app.fetch", 1)
        clock.advance(60)  # past the 30 s backoff
        await callback.wait(2)
        runs = await wait_history(service, "app.fetch", 2)
    assert [(r.outcome, r.message, r.attempt) for r in runs] == [
        ("failure", "disk full", 1),
        ("retry", "busy", 0),
    ]


async def test_disable_and_enable_persist_across_restarts(store: NexusStore[Note, str]) -> None:
    """A disabled periodic job is cancelled, stays off after a restart, and runs again once
    enabled; the switch is in the file."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter()
    job = JobDefinition(
        id="app.tick",
        name="Tick",
        description="every hour",
        schedule=PeriodicSchedule(interval=timedelta(hours=1)),
        callback=callback,
    )
    device = SimulatedDevice()
    async with service_for(store, clock, device, job) as service:
        await callback.wait(1)  # a flex-less periodic job runs at once (WM-7)
        await service.disable("app.tick")
        infos = {info.id: info for info in await service.jobs()}
        assert infos["app.tick"].enabled is False
        assert infos["app.tick"].state == WorkState.CANCELLED.value
    async with service_for(store, clock, device, job) as service:
        clock.advance(2 * 3600)
        await service.settle()
        assert callback.runs == 1  # off: nothing ran after the restart
        info = {i.id: i for i in await service.jobs()}["app.tick"]
        assert (info.enabled, info.name, info.description) == (False, "Tick", "every hour")
        await service.enable("app.tick")
        await callback.wait(2)
    assert JobTable(store.database).enabled("app.tick")


async def test_run_now_is_expedited_and_reports_unmet_constraints(
    store: NexusStore[Note, str],
) -> None:
    """run_now runs a one-time job again at once; constraints it cannot meet are named,
    and its network constraint holds the run until the network is back."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter()
    job = JobDefinition(
        id="app.report",
        name="Report",
        schedule=OneTimeSchedule(delay=timedelta(hours=5)),
        constraints=JobConstraints(network_type=NetworkType.UNMETERED, charging=True),
        callback=callback,
    )
    device = SimulatedDevice()
    device.set(charging=False, metered=True)
    async with service_for(store, clock, device, job) as service:
        result = await service.run_now("app.report")
        assert result.accepted
        assert result.unmet == [
            "network: requires unmetered",
            "charging: the device is not charging",
        ]
        await service.settle()
        assert callback.runs == 0  # expedited work keeps its network constraint (WM-14)
        device.set(metered=False)
        await callback.wait(1)  # charging is not waited for by expedited work
        runs = await wait_history(service, "app.report", 1)
        assert runs[0].outcome == "success"
        with pytest.raises(UnknownWorkError, match="no job 'nope'"):
            await service.run_now("nope")


async def test_switches_flipped_from_another_process_are_applied(
    store: NexusStore[Note, str],
) -> None:
    """Disabling the sync job and asking a job to run through the file (what the command
    line does from another process) reaches the running service."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter()
    job = JobDefinition(
        id="app.once",
        name="Once",
        schedule=OneTimeSchedule(delay=timedelta(days=1)),
        callback=callback,
    )
    async with service_for(store, clock, SimulatedDevice(), job) as service:
        other = Database(store.database.path)
        try:
            table = JobTable(other)
            table.set_enabled(SYNC_JOB, False, now=clock.now())
            table.request_run("app.once", now=clock.now())
        finally:
            other.close()
        await service.settle()  # the commit watcher saw the other connection's commit
        await callback.wait(1)
        store.save(Note(id="n1"), priority=SyncPriority.CRITICAL)
        await service.settle()
        assert store.is_pending("n1")  # the sync is off: the save stays queued
        sync_work = await service.manager.get_work_infos(
            WorkQuery(tags=frozenset({SYNC_JOB}), states=frozenset({WorkState.ENQUEUED}))
        )
        assert sync_work == []
        await service.enable(SYNC_JOB)
        with anyio.fail_after(10):
            while store.is_pending("n1"):
                await service.settle()


async def test_job_definitions_are_validated() -> None:
    """A job needs an id and a callable callback."""
    with pytest.raises(ValueError, match="non-empty"):
        JobDefinition(id="", name="x", callback=Counter())
    with pytest.raises(TypeError, match="callable"):
        JobDefinition(id="x", name="x", callback="nope")  # type: ignore[arg-type]


async def test_command_line_lists_switches_runs_and_shows_history(
    store: NexusStore[Note, str],
) -> None:
    """`nexus-store jobs list|enable|disable|run|history` read and steer the file's jobs."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from nexus_store.cli import app  # noqa: PLC0415

    clock = store.clock
    assert isinstance(clock, FakeClock)
    callback = Counter(TaskResult.success(message="removed 3 files"))
    job = JobDefinition(
        id="app.cleanup",
        name="Cleanup",
        description="removes old files",
        schedule=PeriodicSchedule(interval=timedelta(hours=1), flex=timedelta(minutes=10)),
        constraints=JobConstraints(battery_not_low=True),
        callback=callback,
    )
    async with service_for(store, clock, SimulatedDevice(), job) as service:
        clock.advance(3600)
        await callback.wait(1)
        await wait_history(service, "app.cleanup", 1)
    db = str(store.database.path)
    runner = CliRunner()
    listed = await anyio.to_thread.run_sync(
        lambda: runner.invoke(app, ["jobs", "list", "--db", db])
    )
    assert listed.exit_code == 0, listed.output
    for text in ("app.cleanup", "Cleanup", "every 60.0 min (flex 10.0 min)", "battery not low"):
        assert text in listed.output
    assert SYNC_JOB in listed.output
    off = runner.invoke(app, ["jobs", "disable", "app.cleanup", "--db", db])
    assert off.exit_code == 0, off.output
    assert "switched off" in off.output
    assert not JobTable(store.database).enabled("app.cleanup")
    asked = runner.invoke(app, ["jobs", "run", "app.cleanup", "--db", db])
    assert asked.exit_code == 0, asked.output
    assert JobTable(store.database).row("app.cleanup").run_requested_at is not None  # type: ignore[union-attr]
    on = runner.invoke(app, ["jobs", "enable", "app.cleanup", "--db", db])
    assert on.exit_code == 0
    assert JobTable(store.database).enabled("app.cleanup")
    shown = runner.invoke(app, ["jobs", "history", "app.cleanup", "--db", db])
    assert shown.exit_code == 0, shown.output
    assert "removed 3 files" in shown.output
    assert "success" in shown.output
    unknown = runner.invoke(app, ["jobs", "enable", "nope", "--db", db])
    assert unknown.exit_code == 2
    assert "no job 'nope'" in unknown.output
