"""Pokes, network changes and wakes: runs asked for without waiting for the periodic run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, SyncPriority
from nexus_store.backends._http import HttpBackend
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import BackgroundSyncConfig, WorkManagerSyncService
from nexus_store.sync._jobs import SYNC_JOB, JobTable
from nexus_store.sync._pokes import poke_wants_pull
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.device._events import DeviceEvent, Reading, events_between
from nexus_store.sync.workmanager._adapter import PERIODIC_WORK
from nexus_store.testing import FakeClock, ServerProcess

pytestmark = pytest.mark.anyio

TOKENS = {"device-a": "shared", "device-b": "shared"}


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real sync server (SQLite storage) both devices share a tenant on."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=TOKENS) as process:
        yield process


def test_a_head_beyond_a_cursor_is_a_poke() -> None:
    """A poke asks for a pull only when the head is beyond some collection's cursor."""
    assert poke_wants_pull(5, [3, 5])
    assert not poke_wants_pull(5, [5, 7])
    assert not poke_wants_pull(0, [])


def test_network_changes_and_wakes_are_told_from_two_readings() -> None:
    """Interfaces that differ are a network change; a sleeping clock gaining time is a wake."""
    before = Reading(frozenset({("eth0", "10.0.0.2")}), sleep_offset=100.0)
    same = Reading(frozenset({("eth0", "10.0.0.2")}), sleep_offset=101.0)
    moved = Reading(frozenset({("wlan0", "10.0.0.3")}), sleep_offset=100.0)
    woke = Reading(frozenset({("eth0", "10.0.0.2")}), sleep_offset=3700.0)
    assert events_between(before, same) == []
    assert events_between(before, moved) == [DeviceEvent.NETWORK_CHANGED]
    assert events_between(before, woke) == [DeviceEvent.RESUMED]


async def wait_for_item(store: NexusStore[Note, str], item_id: str, seconds: float) -> Note:
    """Wait (on the store's change stream, no sleeping) until ``item_id`` is in the store."""
    with anyio.fail_after(seconds):
        async for _ in store.watch():
            found = store.get(item_id)
            if found is not None:
                return found
    raise AssertionError("the change stream ended")


async def test_a_save_on_one_device_reaches_the_other_through_a_poke(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Device B's service holds the events stream open and pulls on a poke: device A's
    CRITICAL save lands in B's store while B's periodic run is 15 minutes away."""
    config = BackgroundSyncConfig(min_interval=timedelta(minutes=15))
    async with (
        HttpBackend(server.base_url, token="device-a", timeout=10) as backend_a,
        HttpBackend(server.base_url, token="device-b", timeout=10) as backend_b,
    ):
        store_a = NexusStore(tmp_path / "a.db", model=Note, backend=backend_a, owns_backend=False)
        store_b = NexusStore(tmp_path / "b.db", model=Note, backend=backend_b, owns_backend=False)
        service_a = WorkManagerSyncService(store_a, config=config, device=SimulatedDevice())
        service_b = WorkManagerSyncService(store_b, config=config, device=SimulatedDevice())
        async with service_a, service_b:
            await service_a.schedule_sync()
            await service_b.schedule_sync()
            # B's first run over: it must not be the run that brings A's first save
            with anyio.fail_after(10):
                while not [r for r in await service_b.run_history(SYNC_JOB) if r.ended_at]:
                    await service_b.settle()
            watch = store_b.watch()  # opened first: no change can slip past it
            for n in range(3):
                store_a.save(Note(id=f"n{n}", text="from A"), priority=SyncPriority.CRITICAL)
                with anyio.fail_after(10):
                    async for _ in watch:
                        if store_b.get(f"n{n}") is not None:
                            break
            assert service_b.pokes_seen >= 3
            (periodic,) = await service_b.manager.get_work_infos_for_unique_work(PERIODIC_WORK)
            assert periodic.next_schedule_time - time.time() > 14 * 60
        store_a.close()
        store_b.close()


async def test_a_poke_stream_honours_a_switched_off_sync(
    server: ServerProcess, tmp_path: Path
) -> None:
    """With the sync job switched off, B holds no stream and pulls nothing on A's save."""
    config = BackgroundSyncConfig()
    async with (
        HttpBackend(server.base_url, token="device-a", timeout=10) as backend_a,
        HttpBackend(server.base_url, token="device-b", timeout=10) as backend_b,
    ):
        store_a = NexusStore(tmp_path / "a.db", model=Note, backend=backend_a, owns_backend=False)
        store_b = NexusStore(tmp_path / "b.db", model=Note, backend=backend_b, owns_backend=False)
        service_b = WorkManagerSyncService(store_b, config=config, device=SimulatedDevice())
        table = JobTable(store_b.database)  # switched off before the service starts
        table.upsert(SYNC_JOB, {"name": "Sync"}, now=time.time())
        table.set_enabled(SYNC_JOB, False, now=time.time())
        async with service_b:
            store_a.save(Note(id="quiet"), priority=SyncPriority.CRITICAL)
            store_a.sync()
            await service_b.settle()
            assert service_b.pokes_seen == 0
            assert store_b.get("quiet") is None
            await service_b.enable("nexus-store.sync")
            await wait_for_item(store_b, "quiet", 10)
        store_a.close()
        store_b.close()


@pytest.mark.parametrize("event", ["network_changed", "resumed"])
async def test_network_change_and_wake_run_pending_work(event: str) -> None:
    """A network change or a wake asks for a run at once when ops are queued (a NORMAL save
    would otherwise wait for the periodic run), and ends the backoff of failed ops."""
    clock = FakeClock()
    device = SimulatedDevice()
    with NexusStore(":memory:", model=Note, backend=MemoryBackend(), clock=clock) as store:
        service = WorkManagerSyncService(
            store, config=BackgroundSyncConfig(), clock=clock, device=device
        )
        async with service:
            await service.schedule_sync()
            with anyio.fail_after(10):
                while service.last_summary is None:  # the first periodic run, at once
                    await service.settle()
            store.save(Note(id="n1"), priority=SyncPriority.NORMAL)
            await service.settle()
            assert store.is_pending("n1")  # NORMAL waits for the run 15 minutes away
            if event == "network_changed":
                device.simulate_network_change()
            else:
                device.simulate_resume()
            with anyio.fail_after(10):
                while store.is_pending("n1"):
                    await service.settle()
