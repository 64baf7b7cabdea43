"""``nexus-store worker``: a daemon draining a file that the app process writes.

The lease rules are tested as plain functions and on a file with a FakeClock; the rest
with real processes: this test process is the app (it saves), the workers are
``nexus-store worker`` subprocesses, the server a ``nexus-store serve`` subprocess.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import NexusStore, SyncPriority
from nexus_store._database import Database
from nexus_store.backends import Change
from nexus_store.backends._http import HttpBackend
from nexus_store.backends._memory import MemoryBackend
from nexus_store.cli import app
from nexus_store.queue import OpState
from nexus_store.sync import BGTaskSyncService, WorkerLease
from nexus_store.sync._worker_lease import (
    LeaseAction,
    LeaseRow,
    clamp_lease,
    decide_lease,
    holder_gone,
)
from nexus_store.sync.bgtask import DeterministicLaunchPolicy
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock, ServerProcess

TOKENS = {f"tok{i}": f"tenant{i}" for i in range(8)}
_LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str = ""


# -- the lease, as rules -----------------------------------------------------------------------


def row(holder: str, expires_at: float) -> LeaseRow:
    return LeaseRow(holder, 1, "host", 0.0, 0.0, expires_at)


def test_lease_decisions() -> None:
    """Free: acquire. Ours: renew. Theirs and expired: take over. Theirs and valid: wait."""
    assert decide_lease(None, "a", 100).action is LeaseAction.ACQUIRE
    assert decide_lease(row("a", 50), "a", 100).action is LeaseAction.RENEW
    taken = decide_lease(row("b", 100), "a", 100)
    assert (taken.action, taken.acquired) == (LeaseAction.TAKE_OVER, True)
    waiting = decide_lease(row("b", 110), "a", 100)
    assert (waiting.action, waiting.acquired, waiting.retry_at) == (LeaseAction.WAIT, False, 110)


def test_a_holder_known_to_be_gone_is_taken_over_before_its_lease_ends() -> None:
    """A holder that died on this machine: take over at once, however long its lease."""
    taken = decide_lease(row("b", 1_000_000), "a", 100, holder_gone=True)
    assert taken.action is LeaseAction.TAKE_OVER
    assert decide_lease(row("a", 50), "a", 100, holder_gone=True).action is LeaseAction.RENEW


def test_holder_gone_only_for_a_process_of_this_machine_that_has_ended() -> None:
    """Gone: same host, no such process. Alive, or on another host: not known to be gone."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(20)
    host = "this-host"
    dead = LeaseRow("b", ended.pid, host, 0.0, 0.0, 1e12)
    assert holder_gone(dead, host)
    assert not holder_gone(LeaseRow("b", os.getpid(), host, 0.0, 0.0, 1e12), host)
    assert not holder_gone(LeaseRow("b", ended.pid, "another-host", 0.0, 0.0, 1e12), host)


def test_the_lease_on_a_file(tmp_path: Path) -> None:
    """Two connections to one file: one drains, the other waits, then takes over at expiry;
    the loser cannot renew; a released lease is free at once."""
    clock = FakeClock()
    path = tmp_path / "app.db"
    first_db, second_db = Database(path), Database(path)
    try:
        first = WorkerLease(first_db, "first", ttl=10, clock=clock)
        second = WorkerLease(second_db, "second", ttl=10, clock=clock)
        assert first.try_acquire().action is LeaseAction.ACQUIRE
        assert second.try_acquire().action is LeaseAction.WAIT
        clock.advance(9)
        assert first.renew()
        clock.advance(9)
        assert second.try_acquire().action is LeaseAction.WAIT
        clock.advance(1.5)
        decision = second.try_acquire()
        assert decision.action is LeaseAction.TAKE_OVER
        assert decision.row is not None
        assert decision.row.holder == "first"
        assert not first.renew()
        current = second.current()
        assert current is not None
        assert (current.holder, current.pid) == ("second", os.getpid())
        second.release()
        assert first.try_acquire().action is LeaseAction.ACQUIRE
    finally:
        first_db.close()
        second_db.close()


def test_a_dead_holders_lease_ends_one_ttl_after_a_step_back(tmp_path: Path) -> None:
    """The holder dies, the clock steps back an hour: the other worker takes over after
    one ttl (10 s), not an hour and 10 s."""
    clock = FakeClock()
    path = tmp_path / "app.db"
    first_db, second_db = Database(path), Database(path)
    try:
        first = WorkerLease(first_db, "first", ttl=10, clock=clock)
        second = WorkerLease(second_db, "second", ttl=10, clock=clock)
        assert first.try_acquire().action is LeaseAction.ACQUIRE
        clock.step(-3600)  # ... and "first" is never heard from again
        assert second.try_acquire().action is LeaseAction.WAIT
        clock.advance(9)
        assert second.try_acquire().action is LeaseAction.WAIT
        clock.advance(1)
        assert second.try_acquire().action is LeaseAction.TAKE_OVER
    finally:
        first_db.close()
        second_db.close()


def test_clamp_lease_counts_a_lease_from_now_after_a_step_back() -> None:
    """A lease renewed after now ends one length from now; others are left alone."""
    assert clamp_lease(row("b", 110), 100) is None
    clamped = clamp_lease(LeaseRow("b", 1, "h", 3000.0, 3600.0, 3610.0), 100.0)
    assert clamped is not None
    assert (clamped.renewed_at, clamped.expires_at) == (100.0, 110.0)


# -- real processes ----------------------------------------------------------------------------


class Worker:
    """A ``nexus-store worker`` subprocess whose output lines are read by a thread."""

    def __init__(self, db: Path, server: ServerProcess, token: str, *args: str) -> None:
        remote = ("--remote", server.base_url)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, "worker", "--db", str(db), *remote, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NEXUS_STORE_TOKEN": token},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Wait for an output line containing ``text`` (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} in: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the worker ended before {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return line

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(20)
        self._reader.join(20)
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(20)
        self._reader.join(20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One sync server (SQLite storage) for the module; each test has its own tenant."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=TOKENS) as running:
        yield running


_tokens = iter(sorted(TOKENS))


@pytest.fixture
def token() -> str:
    """A tenant no other test uses."""
    return next(_tokens)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers started by the test; killed at the end if still running."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()


def eventually(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Bounded polling of another process's progress."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def server_changes(server: ServerProcess, token: str) -> list[Change]:
    async def pull_all() -> list[Change]:
        found: list[Change] = []
        async with HttpBackend(server.base_url, token=token, timeout=10) as backend:
            cursor = 0
            for _ in range(1000):
                page = await backend.pull(cursor, 5000)
                found += page.changes
                if not page.has_more:
                    return found
                cursor = page.cursor
        raise AssertionError("pull did not end")

    return anyio.run(pull_all)


def assert_each_once(server: ServerProcess, token: str, ids: set[str]) -> None:
    """Every item is on the server, and every op took effect once (one change per op)."""
    changes = server_changes(server, token)
    assert {c.item_id for c in changes} == ids
    assert max(c.version for c in changes) == len(ids)  # the tenant's change counter


def test_the_worker_drains_what_the_app_saves(
    tmp_path: Path, server: ServerProcess, token: str, workers: list[Worker]
) -> None:
    """Commits in this process wake the worker: CRITICAL and HIGH saves start runs (which
    send whatever is eligible) long before the next periodic run, five minutes away."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save(Note(id="seed"))
    worker = Worker(db, server, token, "--interval", "300", "--high-debounce", "0.05")
    workers.append(worker)
    worker.expect("draining")
    ids = {"seed"}
    for i in range(60):
        item = Note(id=f"n{i}", text="x" * 50)
        store.save(item, priority=SyncPriority(i % 4))
        ids.add(item.id)
    store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
    ids.add("urgent")
    eventually(lambda: not store.is_pending("urgent"), timeout=20)
    eventually(lambda: store.queue.stats().live == 0, timeout=20)
    assert_each_once(server, token, ids)
    result = CliRunner().invoke(app, ["jobs", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "nexus-store.sync.periodic" in result.output
    assert "success" in result.output
    assert "drain lease: held by" in result.output
    assert worker.stop() == 0
    worker.expect("stopped; the lease is released")
    store.close()


def draining_and_waiting(
    tmp_path: Path,
    server: ServerProcess,
    token: str,
    workers: list[Worker],
    options: tuple[str, ...],
) -> tuple[NexusStore[Note, str], Worker, Worker]:
    """A store with one saved note, a worker draining it and a second one waiting."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save(Note(id="seed"))
    first = Worker(db, server, token, *options)
    workers.append(first)
    first.expect("draining")
    second = Worker(db, server, token, *options)
    workers.append(second)
    second.expect("waiting for the drain lease held by")
    return store, first, second


def test_a_second_worker_waits_and_takes_over_from_a_killed_one(
    tmp_path: Path, server: ServerProcess, token: str, workers: list[Worker]
) -> None:
    """SIGKILL the draining worker mid-drain: the waiting one takes over at lease expiry,
    gives back the dead one's leased ops, and every op takes effect once."""
    options = ("--lease-ttl", "1.5", "--lease-for", "3", "--timeout", "2", "--batch-size", "10")
    store, first, second = draining_and_waiting(tmp_path, server, token, workers, options)
    ids = {"seed"}
    for chunk in range(20):
        notes = [Note(id=f"c{chunk}-{i}", text="y" * 100) for i in range(100)]
        store.save_many(notes, priority=SyncPriority.HIGH if chunk % 2 else SyncPriority.CRITICAL)
        ids.update(n.id for n in notes)
    total = len(ids) - 1
    eventually(lambda: store.queue.stats().live < total * 0.8)
    first.kill()
    assert store.queue.stats().live > 0, "the drain finished before the kill"
    second.expect("took over the drain lease")
    second.expect("draining")
    eventually(lambda: store.queue.stats().live == 0)
    assert store.queue.stats().dead == 0
    assert_each_once(server, token, ids)
    assert second.stop() == 0
    store.close()


def test_a_killed_workers_lease_is_taken_over_at_once_on_the_same_machine(
    tmp_path: Path, server: ServerProcess, token: str, workers: list[Worker]
) -> None:
    """A lease of 10 minutes, its holder SIGKILLed: the waiting worker on this machine sees
    the holder's process gone and takes over within seconds, not minutes."""
    store, first, second = draining_and_waiting(
        tmp_path, server, token, workers, ("--lease-ttl", "600")
    )
    first.kill()
    killed = time.monotonic()
    second.expect("took over the drain lease", timeout=30)
    assert time.monotonic() - killed < 20  # polled every 5 s at most; the ttl is 600 s
    store.save(Note(id="after"), priority=SyncPriority.CRITICAL)
    eventually(lambda: store.queue.stats().live == 0)
    assert_each_once(server, token, {"seed", "after"})
    assert second.stop() == 0
    store.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_cleanly_and_gives_the_ops_back(
    tmp_path: Path, server: ServerProcess, token: str, workers: list[Worker], signum: int
) -> None:
    """SIGTERM or SIGINT mid-drain: exit code 0, no op left leased, the lease released; the
    next worker acquires it at once and finishes, each op once."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save(Note(id="seed"))
    options = ("--batch-size", "5", "--lease-ttl", "30")
    worker = Worker(db, server, token, *options)
    workers.append(worker)
    worker.expect("draining")
    notes = [Note(id=f"t{i}", text="z" * 100) for i in range(800)]
    store.save_many(notes, priority=SyncPriority.CRITICAL)
    eventually(lambda: store.queue.stats().live < 700)
    assert worker.stop(signum) == 0
    worker.expect("stopped; the lease is released")
    assert store.queue.stats().count(state=OpState.LEASED) == 0
    with store.database.reading() as conn:
        assert conn.execute("SELECT count(*) FROM nx_worker_lease").fetchone()[0] == 0
    successor = Worker(db, server, token, *options)
    workers.append(successor)
    line = successor.expect("draining")  # no waiting: the lease was free
    assert "took over" not in " ".join(successor.lines)
    assert "draining" in line
    eventually(lambda: store.queue.stats().live == 0)
    assert_each_once(server, token, {"seed"} | {n.id for n in notes})
    assert successor.stop() == 0
    store.close()


def test_worker_refuses_bad_input(tmp_path: Path) -> None:
    """A missing file or a timeout not under the batch lease is exit code 2."""
    runner = CliRunner()
    missing = runner.invoke(app, ["worker", "--db", str(tmp_path / "no.db"), "--remote", "x"])
    assert missing.exit_code == 2
    db = tmp_path / "app.db"
    NexusStore(db, model=Note).close()
    bad = runner.invoke(
        app,
        ["worker", "--db", str(db), "--remote", "http://127.0.0.1:1", "--timeout", "90"],
    )
    assert bad.exit_code == 2
    jobs = runner.invoke(app, ["jobs", "--db", str(db)])
    assert jobs.exit_code == 0
    assert "no background work was ever scheduled" in jobs.output


def test_jobs_lists_bgtask_requests_and_launches(tmp_path: Path) -> None:
    """`nexus-store jobs` also shows pending BGTask-like requests and the launch history."""
    db = tmp_path / "app.db"

    async def schedule_and_launch() -> None:
        store: NexusStore[Note, str] = NexusStore(db, model=Note, backend=MemoryBackend())
        service = BGTaskSyncService(
            store, device=SimulatedDevice(), launch_policy=DeterministicLaunchPolicy()
        )
        async with service:
            await service.schedule_sync()
            store.save(Note(id="n1"))
            handle = service.simulate_launch()
            with anyio.fail_after(10):
                await handle.wait_finished()
        store.close()

    anyio.run(schedule_and_launch)
    result = CliRunner().invoke(app, ["jobs", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "pending requests (BGTask-like)" in result.output
    assert "nexus-store.sync.refresh" in result.output
    assert "launches (newest first)" in result.output
    assert "success" in result.output
