"""Echo suppression: a client never downloads its own changes back, yet receives every
change made by anyone else, with writers interleaving their pushes and pulls.

Against the server core in process and against a real ``nexus-store serve`` over HTTP.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from pydantic import BaseModel

from nexus_store._store import NexusStore
from nexus_store.backends import Changes, RemoteBackend
from nexus_store.backends._http import HttpBackend
from nexus_store.backends._memory import MemoryBackend
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.testing import FakeClock, ServerProcess
from nexus_store.testing._faults import FaultyBackend

pytestmark = pytest.mark.anyio

TENANTS = 8
CLIENTS = 3


class Note(BaseModel):
    id: str
    text: str = ""


class Downloads(FaultyBackend):
    """A backend that remembers every change it downloaded."""

    def __init__(self, inner: RemoteBackend) -> None:
        super().__init__(inner)
        self.downloaded: list[str] = []

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        changes = await super().pull(
            cursor, limit, collections=collections, skip_writer=skip_writer
        )
        self.downloaded += [str(c.item_id) for c in changes.changes]
        return changes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server (SQLite storage) for the module, a token per tenant."""
    folder = tmp_path_factory.mktemp("echo")
    tokens = {f"tok{i}": f"tenant{i}" for i in range(TENANTS)}
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=tokens) as running:
        yield running


_next_tenant = itertools.count()


@asynccontextmanager
async def _clients(kind: str, server: ServerProcess) -> AsyncIterator[list[Downloads]]:
    """Clients of one fresh tenant: in process, or over HTTP to the real server."""
    if kind == "memory":
        core = ServerCore(MemoryStorage())
        try:
            yield [Downloads(MemoryBackend(core)) for _ in range(CLIENTS)]
        finally:
            await core.aclose()
        return
    token = f"tok{next(_next_tenant)}"
    async with AsyncExitStack() as stack:
        remotes = [
            await stack.enter_async_context(HttpBackend(server.base_url, token=token))
            for _ in range(CLIENTS)
        ]
        yield [Downloads(remote) for remote in remotes]


def _stores(clock: FakeClock) -> list[NexusStore[Note, str]]:
    return [NexusStore(":memory:", model=Note, clock=clock) for _ in range(CLIENTS)]


@pytest.mark.parametrize("kind", ["memory", "http"])
async def test_interleaved_writers_get_each_others_changes_and_never_their_own(
    kind: str, server: ServerProcess
) -> None:
    """Three clients save and sync at once, in small batches, round after round: each
    downloads only the others' changes, and all end up with every note."""
    clock = FakeClock()
    stores = _stores(clock)
    async with _clients(kind, server) as remotes:
        for round_ in range(4):
            for n, store in enumerate(stores):
                store.save_many(
                    [Note(id=f"c{n}-r{round_}-{i}", text=f"{round_}") for i in range(60)]
                )
                # Edits of another client's notes too: the latest writer is what counts.
                if round_:
                    other = f"c{(n + 1) % CLIENTS}-r{round_ - 1}-0"
                    store.save(Note(id=other, text=f"edited by {n}"))
            async with anyio.create_task_group() as group:
                for store, remote in zip(stores, remotes, strict=True):
                    group.start_soon(SyncRunner(store, remote, batch_size=7, clock=clock).run)
        # A last round without writes: everyone catches up on the others' last pushes.
        for store, remote in zip(stores, remotes, strict=True):
            await SyncRunner(store, remote, clock=clock).run()
    everything = [{n.id: n for n in store.all()} for store in stores]
    assert everything[0] == everything[1] == everything[2]
    assert len(everything[0]) == CLIENTS * 4 * 60
    for n, remote in enumerate(remotes):
        own = [item for item in remote.downloaded if item.startswith(f"c{n}-")]
        # Its own notes come back only when another client edited them since.
        edited_by_others = {f"c{n}-r{r}-0" for r in range(3)}
        assert set(own) <= edited_by_others, (n, sorted(set(own) - edited_by_others))
        others = {i for i in everything[0] if not i.startswith(f"c{n}-")}
        assert others <= set(remote.downloaded)
    for store in stores:
        store.close()


@pytest.mark.parametrize("kind", ["memory", "http"])
async def test_a_lone_client_downloads_nothing_of_its_own(kind: str, server: ServerProcess) -> None:
    """One client pushing 1,000 notes pulls nothing back, and its cursor moves past them."""
    clock = FakeClock()
    [store, *_] = _stores(clock)
    async with _clients(kind, server) as [remote, *_]:
        store.save_many([Note(id=f"n{i}") for i in range(1000)])
        summary = await SyncRunner(store, remote, clock=clock).run()
        assert summary.pushed == 1000
        assert remote.downloaded == []
        assert store.pull_cursor() == 1000
        again = await SyncRunner(store, remote, clock=clock).run()
    assert again.pulled == 0
    assert remote.downloaded == []
    store.close()
