"""The no-op adapter: nothing is scheduled, manual runs still work."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, SyncError, SyncPriority
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import (
    BackgroundSyncConfig,
    BackgroundSyncStatus,
    NoopSyncService,
    ScheduleResult,
)
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    id: str


async def test_noop_schedules_nothing_but_sync_now_works() -> None:
    """is_supported is False, scheduling answers UNSUPPORTED, sync_now() still syncs."""
    clock = FakeClock()
    backend = MemoryBackend()
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock, backend=backend)
    service = NoopSyncService(store, clock=clock, device=SimulatedDevice())
    statuses = service.status_stream
    async with service:
        assert service.is_supported is False
        assert await service.schedule_sync() is ScheduleResult.UNSUPPORTED
        for priority in SyncPriority:
            assert await service.request_sync(priority) is ScheduleResult.UNSUPPORTED
        store.save(Note(id="n1"), priority=SyncPriority.CRITICAL)
        await service.settle()
        assert store.is_pending("n1")  # nothing runs in the background
        assert await service.why_not_running() == (
            "background execution is not supported on this platform: the no-op adapter "
            "schedules nothing; call sync_now()"
        )
        summary = await service.sync_now()
        assert summary.pushed == 1
        assert await service.run_history() == []
        await service.cancel_sync()
    assert [s async for s in statuses] == [
        BackgroundSyncStatus.IDLE,
        BackgroundSyncStatus.RUNNING,
        BackgroundSyncStatus.COMPLETED,
        BackgroundSyncStatus.IDLE,
    ]
    assert await backend.core.head("default") == 1


async def test_noop_without_a_backend_refuses_sync_now() -> None:
    """A disabled service over a store without a backend says so when asked to sync."""
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note)
    service = NoopSyncService(store, config=BackgroundSyncConfig(enabled=False))
    async with service:
        assert await service.why_not_running() == (
            "background sync is disabled (config.enabled is False)"
        )
        with pytest.raises(SyncError, match="no backend"):
            await service.sync_now()
