"""Keep syncing through faults of the remote as a whole: refused tokens, Retry-After, outages.

Against a real ``nexus-store serve`` process where the wire matters (a fault proxy in front
of it answers 429s), with fake clocks where time matters. Figures printed by these tests
(``-s``) are the ones the issue asks for: ops dead-lettered by an auth outage, requests sent
before a ``Retry-After`` deadline, seconds from heal to an empty queue.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import SyncPriority
from nexus_store._backoff import RetryBackoff
from nexus_store._exceptions import (
    AuthError,
    NetworkError,
    RateLimitedError,
    ServerUnavailableError,
)
from nexus_store._store import NexusStore
from nexus_store.backends import Changes, PushResult, RemoteBackend, RemoteOp
from nexus_store.backends._http import HttpBackend
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync._config import BackgroundSyncConfig
from nexus_store.sync.device._device import SimulatedDevice
from nexus_store.sync.engine._progress import SyncEvent, SyncStopReason
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.sync.workmanager._adapter import WorkManagerSyncService
from nexus_store.testing import FakeClock, FaultMode, FaultProxy, ServerProcess
from nexus_store.testing._faults import Fault, FaultyBackend

pytestmark = pytest.mark.anyio

_TOKENS = {f"tok{i}": f"tenant{i}" for i in range(32)} | {"rotated": "rotation"}
_next_token = itertools.count()
_CLI = (sys.executable, "-c", "from nexus_store.cli import main; main()")


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server process (SQLite storage) for the module."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=_TOKENS) as running:
        yield running


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


def _store(clock: FakeClock, path: str | Path = ":memory:", **kw: Any) -> NexusStore[Note, str]:
    # The tests own their backends (`async with`), shared by several stores.
    kw.setdefault("owns_backend", False)
    return NexusStore(path, model=Note, clock=clock, **kw)


# -- decisions -----------------------------------------------------------------------------


def test_plan_pause_follows_retry_after_or_backs_off_with_full_jitter() -> None:
    """Retry-After sets the deadline; without it, full jitter under a capped ceiling."""
    from nexus_store.sync.engine._pause import PauseReason, plan_pause  # noqa: PLC0415

    backoff = RetryBackoff(1.0, 2.0, 60.0, random=lambda: 0.5)
    assert plan_pause(
        RateLimitedError("429", retry_after=7), failures=0, now=100.0, backoff=backoff
    ) == (PauseReason.RATE_LIMITED, 107.0)
    assert plan_pause(
        ServerUnavailableError("503", retry_after=3), failures=5, now=100.0, backoff=backoff
    ) == (PauseReason.RATE_LIMITED, 103.0)
    assert plan_pause(RateLimitedError("429"), failures=2, now=100.0, backoff=backoff) == (
        PauseReason.RATE_LIMITED,
        102.0,  # half of the ceiling after the 3rd failure (4 s)
    )
    assert plan_pause(NetworkError("down"), failures=20, now=100.0, backoff=backoff) == (
        PauseReason.UNAVAILABLE,
        130.0,  # half of the 60 s cap
    )
    assert plan_pause(
        AuthError("401"), failures=3, now=100.0, backoff=backoff, auth_recheck=5.0
    ) == (PauseReason.AUTH, 105.0)


def test_remote_identity_is_the_url_through_wrappers() -> None:
    """Every process pausing the same server uses the same key; wrappers see through."""
    from nexus_store.sync.engine._pause import remote_identity  # noqa: PLC0415

    http = HttpBackend("http://127.0.0.1:9/", token="t")
    assert remote_identity(FaultyBackend(http)) == remote_identity(http)  # type: ignore[arg-type]
    assert remote_identity(MemoryBackend()).endswith("MemoryBackend")


# -- refused credentials (issue 12, item 2) ------------------------------------------------------


async def test_a_token_rotation_outliving_max_attempts_dead_letters_nothing(
    server: ServerProcess,
) -> None:
    """12 runs with a refused token (max_attempts=3), then a good one: 0 dead, all 20 sent."""
    clock = FakeClock()
    tokens = ["revoked"]

    def provider(*_: object, **__: object) -> str:
        return tokens[-1]

    async with HttpBackend(server.base_url, token=provider, timeout=10, clock=clock) as backend:
        store = _store(clock, backend=backend)
        store.queue.max_attempts = 3
        store.save_many([Note(id=f"n{i}") for i in range(20)], priority=SyncPriority.HIGH)
        for _ in range(12):
            summary = await store.async_sync()
            assert summary.stop_reason is SyncStopReason.AUTH
            assert summary.dead_lettered == summary.failed == 0
            clock.advance(3600)  # past any backoff the ops could have had
        dead = len(store.queue.dead())
        attempts = {op.attempts for op in store.queue.pending()}
        tokens.append("rotated")
        final = await store.async_sync()
        print(f"\nauth outage of 12 runs (max_attempts=3): {dead} ops dead-lettered")
        assert dead == 0
        assert attempts == {0}
        assert final.pushed == 20
        assert final.stop_reason is SyncStopReason.DRAINED
        assert store.queue.stats().live == 0
        store.close()


async def test_the_service_drains_at_once_when_a_new_token_arrives(tmp_path: Path) -> None:
    """After an auth refusal the service looks again every few seconds; a new token drains."""
    clock = FakeClock()
    refused = {"on": True}

    class Gate(RemoteBackend):
        """Refuses credentials (locally, as the backend does for a refused token) until told."""

        def __init__(self) -> None:
            self.inner = MemoryBackend()
            self.pushes = 0
            self.refusals = 0

        async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
            if refused["on"]:
                self.refusals += 1
                raise AuthError("the server refused this token")
            self.pushes += 1
            return await self.inner.push(ops)

        async def pull(
            self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
        ) -> Changes:
            return await self.inner.pull(cursor, limit, collections=collections)

    gate = Gate()
    store = _store(clock, tmp_path / "app.db", backend=gate)
    store.queue.max_attempts = 2
    service = WorkManagerSyncService(
        store, config=BackgroundSyncConfig(), clock=clock, device=SimulatedDevice()
    )
    runs = Runs(service)

    async with service:
        store.save_many([Note(id=f"n{i}") for i in range(5)], priority=SyncPriority.CRITICAL)
        for look in range(1, 6):  # five looks at the refused remote, 5 s apart
            await runs.wait(look)
            assert "refused our credentials" in await service.why_not_running()
            clock.advance(5.0)
        assert store.queue.stats().pending == 5
        refused["on"] = False
        await runs.wait(6)
        assert runs.events[-1].success
        assert store.queue.stats().live == 0
    assert gate.refusals == 5
    assert gate.pushes == 1
    assert store.queue.dead() == []
    store.close()


# -- Retry-After pauses the remote (issue 12, item 4) --------------------------------------------


async def test_a_429_with_retry_after_stops_every_request_until_then(
    server: ServerProcess, tmp_path: Path
) -> None:
    """sync() in a loop, a second store on the file and a CLI process send nothing for 7 s."""
    clock = FakeClock()
    token = f"tok{next(_next_token)}"
    db = tmp_path / "app.db"
    async with (
        FaultProxy(server.base_url) as proxy,
        HttpBackend(proxy.url, token=token, timeout=10, clock=clock) as through,
    ):
        store = _store(clock, db, backend=through)
        store.save_many([Note(id=f"n{i}") for i in range(30)])
        proxy.set_fault(FaultMode.RATE_LIMITED, path_prefix="/v1/push", retry_after=7)
        first = await store.async_sync()
        assert first.stop_reason is SyncStopReason.RATE_LIMITED
        assert first.paused_until is not None
        assert proxy.count() == 1
        proxy.clear()
        # The app calls sync() in a loop for the next 6.9 s: not one request goes out ...
        for _ in range(23):
            clock.advance(0.3)
            looped = await store.async_sync()
            assert looped.stop_reason is SyncStopReason.PAUSED
        # ... nor from another store object on the same file (another process would see
        # the same row) ...
        other = _store(clock, db, backend=through)
        assert (await other.async_sync()).requests == 0
        other.close()
        early = proxy.count() - 1
        print(f"\nrequests before a Retry-After: 7 deadline: {early}")
        assert early == 0
        clock.advance(0.2)
        done = await store.async_sync()
        assert done.pushed == 30
        assert store.queue.stats().live == 0
        store.close()


def test_a_paused_remote_is_left_alone_by_a_command_in_another_process(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`nexus-store sync` in another process sends nothing while the file says "paused"."""
    from nexus_store.sync.engine._pause import RemotePauses, remote_identity  # noqa: PLC0415

    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save(Note(id="a"))
    identity = remote_identity(HttpBackend(server.base_url, token="t"))
    RemotePauses(store.database, identity).pause(
        RateLimitedError("429", retry_after=600),
        now=store.clock.now(),
        backoff=RetryBackoff(),
        auth_recheck=5.0,
    )
    store.close()
    env = {**os.environ, "NEXUS_STORE_TOKEN": f"tok{next(_next_token)}"}
    result = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
        [*_CLI, "sync", "--db", str(db), "--remote", server.base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 requests" in result.stdout
    assert "stopped: paused" in result.stdout
    assert "1 ops still queued" in result.stdout
    assert "nothing is sent to it before" in result.stdout


async def test_the_service_runs_again_at_the_retry_after_deadline(tmp_path: Path) -> None:
    """After a 429 with Retry-After: 7 the worker's service runs at +7 s, not 30-60 s later."""
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend(), push_faults=[Fault.rate_limited(7.0)])
    store = _store(clock, tmp_path / "app.db", backend=faulty)
    service = WorkManagerSyncService(
        store, config=BackgroundSyncConfig(), clock=clock, device=SimulatedDevice()
    )
    runs = Runs(service)
    async with service:
        store.save_many([Note(id=f"n{i}") for i in range(10)], priority=SyncPriority.CRITICAL)
        await runs.wait(1)
        assert faulty.calls == {"push": 1, "pull": 0}
        clock.advance(6.9)
        await service.settle()
        assert faulty.calls == {"push": 1, "pull": 0}
        assert "paused (rate_limited)" in await service.why_not_running()
        clock.advance(0.1)
        await runs.wait(2)
        assert runs.events[-1].success
        assert store.queue.stats().live == 0
        assert faulty.calls["push"] == 2
    store.close()


# -- a healed network drains at once (issue 12, item 4) ------------------------------------------


async def test_after_a_heal_the_waiting_ops_go_at_once() -> None:
    """An outage leaves the ops untouched; ops backing off for up to ten minutes from
    earlier failures all go in the first run after the heal."""
    clock = FakeClock()
    store = _store(clock)
    store.queue.backoff = RetryBackoff(base=60.0, max_delay=600.0)
    store.save_many([Note(id=f"n{i}") for i in range(300)])
    # Some ops failed one by one earlier (the server answered "retry" for them).
    earlier = [op.op_id for op in store.queue.pending()[:100]]
    batch = store.queue.lease(100, 30.0)
    store.queue.nack(earlier, "retry later", token=batch.token)
    faulty = FaultyBackend(MemoryBackend(), network_error=1.0, pull_error=1.0)
    broken = await SyncRunner(store, faulty, batch_size=100).run()
    assert broken.stop_reason is SyncStopReason.FAILURES
    assert store.queue.stats().backing_off == 100  # the outage added no attempt, no backoff
    assert sum(op.attempts for op in store.queue.pending()) == 100
    # The network heals; the remote's probe backoff (at most 4 s) ends, the ops' would
    # take up to 10 minutes.
    faulty = FaultyBackend(faulty.inner)
    clock.advance(4.0)
    healed = await SyncRunner(store, faulty, batch_size=100).run()
    print(f"\nops left after the first run after the heal: {healed.remaining}")
    assert healed.pushed == 300
    assert healed.stop_reason is SyncStopReason.DRAINED
    assert store.queue.stats().live == 0


# -- the summary tells the truth (issue 12, item 7) ----------------------------------------------


async def test_a_failed_run_never_says_drained() -> None:
    """A network failure leaves 20 ops queued: the summary says so (20 left), not drained."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}") for i in range(20)])
    faulty = FaultyBackend(MemoryBackend(), push_faults=[Fault.network()])
    summary = await SyncRunner(store, faulty).run()
    assert summary.stop_reason is SyncStopReason.FAILURES
    assert summary.remaining == 20
    assert "20 left" in summary.message()
    assert not summary.ok


def test_the_command_after_a_tls_failure_says_what_is_queued(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`nexus-store sync` over TLS to a plain-HTTP port: not "drained" but 20 ops queued."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save_many([Note(id=f"n{i}") for i in range(20)])
    store.close()
    url = server.base_url.replace("http://", "https://")
    env = {**os.environ, "NEXUS_STORE_TOKEN": f"tok{next(_next_token)}"}
    result = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
        [*_CLI, "sync", "--db", str(db), "--remote", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "drained" not in result.stdout
    assert "20 ops still queued" in result.stdout
