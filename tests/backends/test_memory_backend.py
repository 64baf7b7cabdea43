"""MemoryBackend: a real in-process server; clients share it by sharing its core."""

from __future__ import annotations

import pytest

from nexus_store import LifecycleError
from nexus_store.backends import MemoryBackend, OpStatus, RemoteBackend
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.testing import OpWriter

pytestmark = pytest.mark.anyio


async def test_clients_sharing_a_core_see_each_others_writes() -> None:
    """Two backends over one core are two clients of one server."""
    phone = MemoryBackend()
    laptop = MemoryBackend(phone.core)
    w = OpWriter("notes")
    await phone.push([w.upsert("a", {"text": "hi"})])
    page = await laptop.pull()
    assert [(c.item_id, c.data) for c in page.changes] == [("a", {"text": "hi"})]
    await laptop.aclose()
    assert (await phone.pull()).cursor == 1  # closing a client leaves the shared core open
    await phone.aclose()


async def test_closed_backend_refuses_work_and_closes_its_own_core() -> None:
    """After aclose a backend raises LifecycleError; the core it made is closed too."""
    async with MemoryBackend() as backend:
        assert isinstance(backend, RemoteBackend)
    with pytest.raises(LifecycleError):
        await backend.push([])
    with pytest.raises(LifecycleError):
        await backend.pull()
    with pytest.raises(LifecycleError):
        await backend.core.head("default")
    await backend.aclose()


async def test_conflict_policy_configures_the_backends_own_core() -> None:
    """conflict_policy applies to a new core; given with a core it is an error."""
    backend = MemoryBackend(conflict_policy="server_wins")
    w = OpWriter("n")
    await backend.push([w.upsert("a", {"v": 1}, millis=1)])
    answer = (await backend.push([w.upsert("a", {"v": 2}, millis=9)])).results[0]
    assert answer.status is OpStatus.CONFLICT
    with pytest.raises(ValueError, match="conflict_policy"):
        MemoryBackend(ServerCore(MemoryStorage()), conflict_policy="lww")
    with pytest.raises(ValueError, match="tenant"):
        MemoryBackend(tenant="")
    assert repr(MemoryBackend(tenant="shop")) == "MemoryBackend(tenant='shop')"


async def test_results_do_not_alias_the_callers_data() -> None:
    """Data pulled back is a copy: changing the pushed or pulled dict changes nothing stored."""
    backend = MemoryBackend()
    op = OpWriter("n").upsert("a", {"tags": ["x"]})
    await backend.push([op])
    assert op.data is not None
    op.data["tags"].append("mutated")
    pulled = (await backend.pull()).changes[0]
    assert pulled.data == {"tags": ["x"]}
    assert pulled.data is not None
    pulled.data["tags"].append("again")
    assert (await backend.pull()).changes[0].data == {"tags": ["x"]}
