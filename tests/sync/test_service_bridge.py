"""The thread bridge: a background sync service driven from synchronous code."""

from __future__ import annotations

import threading

import pytest
from pydantic import BaseModel

from nexus_store import LifecycleError, NexusStore, SyncPriority
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import (
    BackgroundSyncConfig,
    BackgroundSyncStatus,
    BackgroundSyncThread,
    ScheduleResult,
    SyncEvent,
    SyncProgress,
    WorkManagerSyncService,
)
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock


class Note(BaseModel):
    id: str


def test_the_bridge_runs_the_service_in_a_thread_with_callbacks() -> None:
    """From plain synchronous code: a CRITICAL save is synced in the background, the
    callbacks see the statuses, events and progress, and stop() ends it all."""
    clock = FakeClock()
    backend = MemoryBackend()
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock, backend=backend)
    service = WorkManagerSyncService(
        store, config=BackgroundSyncConfig(), clock=clock, device=SimulatedDevice()
    )
    statuses: list[BackgroundSyncStatus] = []
    events: list[SyncEvent] = []
    progress: list[SyncProgress] = []
    synced = threading.Event()

    def on_event(event: SyncEvent) -> None:
        events.append(event)
        synced.set()

    bridge = BackgroundSyncThread(
        service, on_status=statuses.append, on_event=on_event, on_progress=progress.append
    )
    with pytest.raises(LifecycleError, match="not running"):
        bridge.schedule_sync()
    with bridge:
        assert bridge.running
        assert bridge.state.value == "running"
        assert bridge.is_supported
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)  # from this thread
        assert synced.wait(10)
        assert not store.is_pending("urgent")
        assert bridge.request_sync(SyncPriority.HIGH) is ScheduleResult.ACCEPTED
        store.save(Note(id="later"))
        summary = bridge.sync_now()
        assert summary.pushed == 1
        bridge.cancel_sync()
        assert bridge.why_not_running().startswith("not scheduled")
        assert bridge.status is BackgroundSyncStatus.IDLE
        bridge.settle()
        assert len(bridge.run_history()) >= 1
    assert not bridge.running
    assert statuses[0] is BackgroundSyncStatus.IDLE
    assert BackgroundSyncStatus.RUNNING in statuses
    assert statuses[-1] is BackgroundSyncStatus.IDLE
    assert all(e.task_id == "nexus-store.sync" for e in events)
    assert progress
    bridge.stop()  # idempotent
    with pytest.raises(LifecycleError, match="stopped"):
        bridge.sync_now()
    with pytest.raises(LifecycleError, match="starts once"):
        bridge.start()
