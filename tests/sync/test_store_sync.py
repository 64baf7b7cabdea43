"""The store's own sync entry points: sync(), async_sync() and wait_synced()."""

from __future__ import annotations

import threading

import pytest
from pydantic import BaseModel

from nexus_store import ErrorKind, NexusStore, StoreClosedError, SyncError, SyncPriority
from nexus_store.backends import MemoryBackend
from nexus_store.sync.device import SimulatedDevice


class Note(BaseModel):
    """A small record."""

    id: str
    text: str = ""


def test_sync_pushes_then_another_client_pulls() -> None:
    """store.sync() drains the queue to the backend; a second store on the same server pulls it."""
    server = MemoryBackend()
    writer = NexusStore[Note, str](":memory:", model=Note, backend=server)
    reader = NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend(server.core))
    writer.save(Note(id="a", text="one"), priority=SyncPriority.LOW)
    writer.save(Note(id="b", text="two"), priority=SyncPriority.CRITICAL)
    summary = writer.sync()
    assert summary.pushed == 2
    assert writer.queue.stats().total == 0
    assert reader.sync().pulled == 2
    assert reader.get("a") == Note(id="a", text="one")
    # A second call reuses the store's event-loop thread and its backend.
    writer.save(Note(id="a", text="edited"))
    assert writer.sync().pushed == 1
    reader.sync()
    assert reader.get("a") == Note(id="a", text="edited")
    writer.close()
    reader.close()


@pytest.mark.anyio
async def test_async_sync_respects_the_device() -> None:
    """async_sync() sends nothing while the device is offline, and everything once online."""
    store = NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend())
    store.save(Note(id="x"))
    device = SimulatedDevice(connected=False)
    offline = await store.async_sync(device=device)
    assert offline.pushed == 0
    assert store.is_pending("x")
    device.set(connected=True)
    online = await store.async_sync(device=device)
    assert online.pushed == 1
    assert not store.is_pending("x")
    store.close()


def test_sync_without_a_backend_or_after_close() -> None:
    """No backend gives SyncError; a closed store gives StoreClosedError."""
    store = NexusStore[Note, str](":memory:", model=Note)
    store.save(Note(id="x"))
    with pytest.raises(SyncError, match="backend"):
        store.sync()
    store.close()
    with pytest.raises(StoreClosedError):
        store.sync(backend=MemoryBackend())


def test_wait_synced_returns_once_acked_by_a_sync_in_another_thread() -> None:
    """wait_synced() returns True when another thread's sync run acks the item."""
    store = NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend())
    store.save(Note(id="w"), priority=SyncPriority.HIGH)
    worker = threading.Thread(target=store.sync)
    worker.start()
    assert store.wait_synced("w", timeout=30) is True
    worker.join(timeout=30)
    store.close()


def test_wait_synced_reports_a_dead_letter_and_times_out() -> None:
    """A dead-lettered op gives False; an op nobody sends gives TimeoutError."""
    store = NexusStore[Note, str](":memory:", model=Note)
    store.save(Note(id="dead"))
    store.save(Note(id="stuck"))
    leased = [op for op in store.queue.lease(10) if op.item_id == "dead"]
    store.queue.nack([op.op_id for op in leased], "refused", kind=ErrorKind.PERMANENT)
    store.queue.release([op.op_id for op in store.queue.pending(store.collection, "stuck")])
    assert store.wait_synced("dead", timeout=5) is False
    with pytest.raises(TimeoutError):
        store.wait_synced("stuck", timeout=0.05)
    store.close()
