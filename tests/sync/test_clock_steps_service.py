"""The background service through steps of the wall clock (FakeClock.step: monotonic time
does not move): schedules and retries keep their length, nothing waits for the clock to
catch up."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import SyncPriority
from nexus_store._store import NexusStore
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync._config import BackgroundSyncConfig
from nexus_store.sync.device._device import SimulatedDevice
from nexus_store.sync.engine._progress import SyncEvent
from nexus_store.sync.workmanager._adapter import WorkManagerSyncService
from nexus_store.testing import FakeClock
from nexus_store.testing._faults import Fault, FaultyBackend

pytestmark = pytest.mark.anyio

HOUR = 3600.0


class Note(BaseModel):
    id: str
    text: str = ""


class Runs:
    """The service's sync events, waited for without sleeping."""

    def __init__(self, service: WorkManagerSyncService) -> None:
        self.events: list[SyncEvent] = []
        self._changed = anyio.Event()
        service.events.add_callback(self._add)

    def _add(self, event: SyncEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.events) < count:
                await self._changed.wait()


@pytest.mark.parametrize("step", [-HOUR, -24 * HOUR])
async def test_the_periodic_run_keeps_its_interval_when_the_clock_steps_back(
    tmp_path: Path, step: float
) -> None:
    """A step back right after a periodic run: the next one comes an interval later."""
    clock = FakeClock()
    store = NexusStore(tmp_path / "app.db", model=Note, clock=clock, backend=MemoryBackend())
    interval = timedelta(minutes=15)
    service = WorkManagerSyncService(
        store,
        config=BackgroundSyncConfig(min_interval=interval),
        clock=clock,
        device=SimulatedDevice(),
    )
    runs = Runs(service)
    async with service:
        await service.schedule_sync()
        await runs.wait(1)
        store.save(Note(id="normal"))
        await service.settle()  # the run's end is recorded: the next one is due in 15 min
        assert "next periodic run at 2023-11-14T22:28:20Z" in await service.why_not_running()
        clock.step(step)
        await service.settle()
        clock.advance(interval.total_seconds())
        await runs.wait(2)
        assert not store.is_pending("normal")
    store.close()


async def test_a_retry_after_a_failed_run_is_not_held_by_a_step_back(tmp_path: Path) -> None:
    """A CRITICAL save whose run failed is retried at its backoff, not an hour later."""
    clock = FakeClock()
    # A 500 on the op alone (the remote answers the probe): the op is charged and the run
    # asks the scheduler to retry.
    faulty = FaultyBackend(MemoryBackend(), push_faults=[Fault.server_error()])
    store = NexusStore(tmp_path / "app.db", model=Note, clock=clock, backend=faulty)
    service = WorkManagerSyncService(
        store,
        config=BackgroundSyncConfig(backoff_delay=timedelta(seconds=30)),
        clock=clock,
        device=SimulatedDevice(),
    )
    runs = Runs(service)
    async with service:
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        await runs.wait(1)
        assert not runs.events[0].success
        await service.settle()
        assert "backing off until" in await service.why_not_running()
        clock.step(-HOUR)
        await service.settle()
        clock.advance(60)  # two backoff lengths: the step is noticed, then the wait runs
        await service.settle()
        clock.advance(60)
        await runs.wait(2)
        assert runs.events[-1].success
        assert not store.is_pending("urgent")
    store.close()
