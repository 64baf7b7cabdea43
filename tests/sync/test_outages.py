"""Outages never dead-letter healthy ops; a poison op that makes the server fail is isolated.

A real ``nexus-store serve`` behind the test kit's fault proxy. An outage (every push
answered 503 without ``Retry-After``, or the server process gone: the proxy answers 502,
the network refuses) lasts for many more runs than the ops' attempt budget; afterwards no
op has counted an attempt, none is dead-lettered, and the queue drains once it heals. A
poison op that makes the server fail (500 for every request that carries it) is charged
alone: it reaches the dead letters after ``max_attempts`` runs while every other op
arrives at once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from nexus_store import OpState, SyncPriority
from nexus_store._store import NexusStore
from nexus_store.backends._http import HttpBackend
from nexus_store.sync.engine._progress import SyncStopReason, SyncSummary
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.testing import FakeClock, FaultMode, FaultProxy, ServerProcess

pytestmark = pytest.mark.anyio

TOKEN = "outage-token"
ATTEMPTS = 4
"""The ops' attempt budget in these tests: every outage lasts several times longer."""


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture
def anyio_backend() -> str:
    """The fault proxy runs on asyncio."""
    return "asyncio"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server process of its own, on a port it keeps (a test kills and restarts it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    database = f"sqlite:///{tmp_path}/server.db"
    with ServerProcess(database, tokens={TOKEN: "outages"}, port=port) as running:
        yield running


def _store(clock: FakeClock, count: int) -> NexusStore[Note, str]:
    store: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    store.queue.max_attempts = ATTEMPTS
    store.save_many([Note(id=f"n{i}", text="x") for i in range(count)])
    return store


async def _run(store: NexusStore[Note, str], remote: HttpBackend, clock: FakeClock) -> SyncSummary:
    """One run, then the fake clock past the remote's pause and every op's backoff."""
    summary = await SyncRunner(store, remote, batch_size=50, pull=False).run()
    due = [op.next_attempt_at for op in store.queue.pending()]
    if summary.paused_until is not None:
        due.append(summary.paused_until.timestamp())
    clock.set(max([clock.now(), *due]) + 0.001)
    return summary


async def test_an_outage_of_many_runs_charges_no_op(server: ServerProcess) -> None:
    """503s without Retry-After, then the server gone, for 6x the attempt budget in runs:
    no attempt, no dead letter; after the heal everything arrives once."""
    clock = FakeClock()
    store = _store(clock, 200)
    async with (
        FaultProxy(server.base_url) as proxy,
        HttpBackend(proxy.url, token=TOKEN, timeout=2.0, clock=clock) as remote,
        HttpBackend(server.base_url, token=TOKEN) as direct,
    ):
        proxy.set_fault(FaultMode.UNAVAILABLE, path_prefix="/v1/")
        for _ in range(3 * ATTEMPTS):
            summary = await _run(store, remote, clock)
            assert summary.pushed == 0
        assert proxy.stats.unavailable >= 3 * ATTEMPTS
        proxy.clear()
        server.kill()  # the proxy answers 502, then ...
        for _ in range(3 * ATTEMPTS):
            summary = await _run(store, remote, clock)
            assert summary.stop_reason in (SyncStopReason.FAILURES, SyncStopReason.PAUSED)
        assert proxy.stats.upstream_errors >= 3 * ATTEMPTS
        ops = store.queue.pending(states=tuple(OpState))
        assert len(ops) == 200
        assert {op.attempts for op in ops} == {0}
        assert store.queue.stats().dead == 0
        server.start()
        healed = await _run(store, remote, clock)
        assert healed.pushed == 200
        page = await direct.pull(0, 1000)
    assert len(page.changes) == 200
    assert store.queue.stats().total == 0
    store.close()


async def test_a_poison_op_that_fails_the_server_is_dead_lettered_alone(
    server: ServerProcess,
) -> None:
    """Every request carrying the poison op gets a 500: it alone is charged, run after run,
    until it is dead-lettered; every other op arrives in the first run."""
    clock = FakeClock()
    store = _store(clock, 120)
    store.save(Note(id="poison", text="boom"), priority=SyncPriority.HIGH)
    store.save_many([Note(id=f"m{i}", text="x") for i in range(80)])
    async with (
        FaultProxy(server.base_url) as proxy,
        HttpBackend(proxy.url, token=TOKEN, timeout=2.0, clock=clock) as remote,
        HttpBackend(server.base_url, token=TOKEN) as direct,
    ):
        proxy.set_fault(FaultMode.SERVER_ERROR, path_prefix="/v1/push", body_contains=b"poison")
        first = await _run(store, remote, clock)
        assert first.pushed == 200
        assert first.failed == 1
        summaries = [first]
        for _ in range(2 * ATTEMPTS):
            if store.queue.stats().live == 0:
                break
            summaries.append(await _run(store, remote, clock))
        page = await direct.pull(0, 1000)
    [dead] = store.queue.dead()
    assert dead.item_id == "poison"
    assert dead.attempts == ATTEMPTS
    assert "500" in (dead.last_error or "")
    assert sum(s.pushed for s in summaries) == 200
    assert sum(s.dead_lettered for s in summaries) == 1
    assert len(page.changes) == 200
    assert "poison" not in {c.item_id for c in page.changes}
    store.close()
