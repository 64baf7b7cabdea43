"""Every resource closes from synchronous code (close(), with) and async code (aclose(),
async with), whichever event loop its connections belong to."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import LifecycleError, NexusStore
from nexus_store.backends import HttpBackend, MemoryBackend
from nexus_store.sync import BackgroundSyncServiceFactory, BackgroundSyncThread
from nexus_store.testing import ServerProcess


class Note(BaseModel):
    id: str


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real sync server."""
    with ServerProcess(tokens={"t": "tenant-closing"}) as running:
        yield running


def test_memory_backend_closes_both_ways() -> None:
    """with / close() and async with / aclose(), also close() called inside a running loop."""
    with MemoryBackend() as backend:
        pass
    assert backend._closed

    async def inside() -> None:
        async with MemoryBackend() as first:
            pass
        assert first._closed
        second = MemoryBackend()
        second.close()  # no connections of any loop: closes from inside a loop as well
        assert second._closed

    asyncio.run(inside())


def test_a_sync_app_closes_an_http_backend_it_synced_with(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Used by store.sync() (the shared loop), closed from the app's thread: no error."""
    backend = HttpBackend(server.base_url, token="t")
    with NexusStore[Note, str](
        tmp_path / "a.db", model=Note, backend=backend, owns_backend=False
    ) as store:
        store.save(Note(id="n1"))
        assert store.sync().pushed == 1
    assert not backend._closed  # the store did not own it
    backend.close()
    backend.close()  # idempotent
    assert backend._closed


def test_a_store_inside_the_loop_of_its_backend_says_to_await(
    server: ServerProcess, tmp_path: Path
) -> None:
    """store.close() on the loop the backend's connections belong to: a clear error and
    nothing closed; await store.aclose() closes both."""

    async def app() -> None:
        store = NexusStore[Note, str](
            tmp_path / "b.db", model=Note, backend=HttpBackend(server.base_url, token="t")
        )
        store.save(Note(id="n2"))
        assert (await store.async_sync()).pushed == 1
        with pytest.raises(LifecycleError, match=r"await store\.aclose"):
            store.close()
        assert not store.closed
        await store.aclose()
        assert store.closed
        assert store.backend is not None
        assert store.backend._closed  # type: ignore[attr-defined]

    asyncio.run(app())


# The socket the ended loop left open is reported by asyncio when collected, below.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_closing_after_the_loop_ended_is_a_clear_error(server: ServerProcess) -> None:
    """A backend left open when its event loop ended cannot be closed any more: it says so."""
    backend = HttpBackend(server.base_url, token="t")
    asyncio.run(backend.pull(0))
    with pytest.raises(LifecycleError, match="has ended"):
        backend.close()
    with pytest.raises(LifecycleError, match="has ended"):
        asyncio.run(backend.aclose())  # not asyncio's "Event loop is closed"
    del backend
    gc.collect()


def test_the_bridge_closes_both_ways(tmp_path: Path) -> None:
    """BackgroundSyncThread: with / close() from sync code, async with / aclose() from async."""
    with NexusStore[Note, str](tmp_path / "c.db", model=Note, backend=MemoryBackend()) as store:
        with BackgroundSyncThread(BackgroundSyncServiceFactory.create(store)) as bridge:
            assert bridge.running
        assert not bridge.running
        other = BackgroundSyncThread(BackgroundSyncServiceFactory.create(store)).start()
        other.close()
        assert not other.running

        async def from_async() -> None:
            async with BackgroundSyncThread(BackgroundSyncServiceFactory.create(store)) as it:
                assert it.running
            assert not it.running

        anyio.run(from_async)
