"""Fault soak: devices keep writing through crashes, restarts and a broken network.

For a while (10 minutes, or 40 seconds for a quicker look; both under ``-m slow``), with
real processes everywhere:

- 3 devices, each an app process saving notes (``soak_writer.py``, 8 saves/s, every
  priority) and a ``nexus-store worker`` process draining its file through a
  :class:`~nexus_store.testing.FaultProxy`;
- 2 ``nexus-store serve`` processes on one PostgreSQL database (pgserver);

random faults are injected every 0.5 to 3 s: an app or a worker SIGKILLed and restarted, a
server SIGKILLed and restarted on its port, PostgreSQL restarted, and on a proxy a
partition (every connection reset), random resets, a pause (requests held unanswered),
lost answers (the server applied the batch), 503s and 429s with ``Retry-After``, each for
1 to 6 s. Then everything heals and the test waits for every queue to empty.

What must hold: lost 0 (every save the app saw return is on the server), duplicated 0
(each note is one change on the server: the tenant's change counter equals the number of
notes), divergent 0 (after a final pull every device holds exactly the server's notes),
no op dead-lettered, and every queue empty within ``HEAL_BOUND`` seconds after the heal.

Why the bound holds: an outage charges no op (no op backs off for it); it pauses the
remote, and a worker probes a paused remote (``GET /health``) at most 4 s apart (full
jitter, 0.5 s doubling); the first answer ends the pause and the service runs at once (a
run asked for while the scheduler backs off replaces that backoff). So after the heal a
worker drains within 4 s plus the drain itself, or, if it was just killed, its
successor's start and the drain lease's 2 s ttl. The report lists ops still queued 10 s
after the heal (``still queued 10 s after the heal``), and why.

Neither run is in the default suite: each takes minutes of real processes.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import NexusStore, OpState, PrioritySyncQueue
from nexus_store.backends import Change, HttpBackend
from nexus_store.testing import FaultMode, FaultProxy, ServerProcess, TemporaryPostgres

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

DEVICES = 3
ACTIONS = ("app", "worker", "server", "postgres", "partition", "resets", "pause", "drops", "503")
ACTIONS += ("429",)
SERVERS = 2
WRITE_RATE = 8.0
HEAL_BOUND = 10.0
"""Seconds from the heal to every queue empty: the 4 s probe cap, a worker's restart and the
drain lease's ttl, and the drain (see the module docstring)."""
TOKEN = "soak-token"
WRITER = Path(__file__).with_name("soak_writer.py")
_LAUNCHER = "from nexus_store.cli import main; main()"
_WORKER_OPTIONS = (
    "--interval", "1", "--high-debounce", "0.05", "--timeout", "2", "--lease-for", "5",
    "--lease-ttl", "2",
)  # fmt: skip


class Note(BaseModel):
    id: str
    text: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lines:
    """A subprocess whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))

    def drained(self) -> list[str]:
        """The lines read so far (and not returned before)."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(20)
        self._pump.join(20)


@dataclass
class Device:
    """One device: its file, its app process and its worker process."""

    number: int
    db: Path
    remote: str
    writer: Lines | None = None
    worker: Lines | None = None
    generation: int = 0
    saved: set[str] = field(default_factory=set)
    """Ids whose save returned in the app (printed after the commit)."""
    worker_log: list[str] = field(default_factory=list)

    def start_writer(self) -> None:
        self.generation += 1
        prefix = f"d{self.number}g{self.generation}"
        self.writer = Lines([sys.executable, str(WRITER), str(self.db), prefix, str(WRITE_RATE)])

    def start_worker(self) -> None:
        args = [sys.executable, "-c", _LAUNCHER, "worker", "--db", str(self.db)]
        args += ["--remote", self.remote, *_WORKER_OPTIONS]
        self.worker = Lines(args, env={"NEXUS_STORE_TOKEN": TOKEN})

    def collect(self) -> None:
        if self.writer is not None:
            self.saved.update(self.writer.drained())
        if self.worker is not None:
            self.worker_log += self.worker.drained()

    def kill_writer(self) -> None:
        if self.writer is not None:
            self.writer.kill()
            self.collect()
            self.writer = None

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.collect()
            self.worker = None


@dataclass
class Report:
    """What a soak found."""

    faults: dict[str, int]
    saved: int
    on_server: int
    lost: int
    """Saved, acknowledged to the app, and neither on the server nor queued anywhere."""
    undelivered: int
    """Saved and still queued when the wait for the queues to empty ended."""
    duplicated: int
    divergent: int
    dead: int
    heal_seconds: float
    backoff_at_heal: float
    """The longest wait an op still had for its own backoff when the faults stopped."""
    still_waiting: list[str] = field(default_factory=list)
    """Ops still queued 10 s after the heal, and why (empty when drained by then)."""

    def line(self) -> str:
        return (
            f"saved {self.saved}, on server {self.on_server}, lost {self.lost}, undelivered "
            f"{self.undelivered}, duplicated "
            f"{self.duplicated}, divergent {self.divergent}, dead-lettered {self.dead}, "
            f"queues empty {self.heal_seconds:.1f} s after the heal (longest op backoff then "
            f"{self.backoff_at_heal:.1f} s); faults {self.faults}"
            + "".join(f"\n  still queued 10 s after the heal: {w}" for w in self.still_waiting)
        )


async def server_notes(url: str) -> tuple[dict[str, Change], int]:
    """Every note on the server and the tenant's head (its change counter)."""
    notes: dict[str, Change] = {}
    head = cursor = 0
    async with HttpBackend(url, token=TOKEN, timeout=10) as remote:
        for _ in range(10_000):
            page = await remote.pull(cursor, 5000)
            for change in page.changes:
                notes[str(change.item_id)] = change
                head = max(head, change.version)
            if not page.has_more:
                return notes, head
            cursor = page.cursor
    raise AssertionError("the pull did not end")


def live_ops(db: Path) -> tuple[int, int]:
    """(live ops, dead ops) in a device's queue."""
    q = PrioritySyncQueue(db, create=False)
    try:
        stats = q.stats()
        return stats.live, stats.count(state=OpState.DEAD)
    finally:
        q.close()


def longest_backoff(db: Path) -> float:
    """Seconds until the last op of a device's queue that waits for its backoff is due."""
    q = PrioritySyncQueue(db, create=False)
    try:
        due = [op.next_attempt_at for op in q.pending() if op.attempts > 0]
        return max(0.0, max(due, default=0.0) - time.time())
    finally:
        q.close()


def queued_ids(db: Path) -> set[str]:
    """Ids of the notes with an op still in a device's queue (any state)."""
    q = PrioritySyncQueue(db, create=False)
    try:
        return {str(op.item_id) for op in q.pending(states=tuple(OpState))}
    finally:
        q.close()


def waiting(db: Path) -> list[str]:
    """What the live ops of a device's queue wait for (a few lines, for the report)."""
    q = PrioritySyncQueue(db, create=False)
    try:
        now = time.time()
        return [
            f"{op.item_id}: {op.state.value}, {op.attempts} attempts, due in "
            f"{op.next_attempt_at - now:.1f} s, leased for "
            f"{(op.leased_until or now) - now:.1f} s, last error {op.last_error!r}"
            for op in q.pending(states=(OpState.PENDING, OpState.LEASED))[:3]
        ]
    finally:
        q.close()


async def soak(tmp_path: Path, seconds: float, seed: int) -> Report:
    rng = random.Random(seed)
    faults: dict[str, int] = {}
    with ExitStack() as stack:
        pg = stack.enter_context(TemporaryPostgres())  # its own directory: pg_ctl must reach it
        dsn = pg.create_database()
        ports = [free_port() for _ in range(SERVERS)]
        servers = [
            ServerProcess(dsn, tokens={TOKEN: "soak"}, port=port, startup_timeout=60)
            for port in ports
        ]
        for server in servers:
            stack.callback(server.stop)
            server.start()
        direct = [f"http://127.0.0.1:{port}" for port in ports]
        async with (
            FaultProxy(direct[0], seed=seed) as proxy0,
            FaultProxy(direct[1], seed=seed + 1) as proxy1,
        ):
            proxies = [proxy0, proxy1]
            devices = [
                Device(n, tmp_path / f"device{n}.db", proxies[n % SERVERS].url)
                for n in range(DEVICES)
            ]
            for device in devices:
                NexusStore(device.db, model=Note).close()  # the file exists for the worker
                device.start_writer()
                device.start_worker()
                stack.callback(device.kill_writer)
                stack.callback(device.kill_worker)

            async def clear_later(proxy: FaultProxy, after: float) -> None:
                await anyio.sleep(after)
                proxy.clear()

            def note(what: str) -> None:
                faults[what] = faults.get(what, 0) + 1

            deadline = time.monotonic() + seconds
            async with anyio.create_task_group() as group:
                while time.monotonic() < deadline:
                    await anyio.sleep(rng.uniform(0.5, 3.0))  # pacing the faults
                    for device in devices:
                        device.collect()
                    action = rng.choice(ACTIONS)
                    note(action)
                    if action == "app":
                        device = rng.choice(devices)
                        device.kill_writer()
                        device.start_writer()
                    elif action == "worker":
                        device = rng.choice(devices)
                        device.kill_worker()
                        device.start_worker()
                    elif action == "server":
                        server = rng.choice(servers)
                        await anyio.to_thread.run_sync(server.kill)
                        await anyio.to_thread.run_sync(server.start)
                    elif action == "postgres":
                        await anyio.to_thread.run_sync(pg.restart)
                    else:
                        proxy = rng.choice(proxies)
                        mode, rate = {
                            "partition": (FaultMode.RESET, 1.0),
                            "resets": (FaultMode.RESET, 0.3),
                            "pause": (FaultMode.STALL, 1.0),
                            "drops": (FaultMode.DROP_RESPONSE, 0.3),
                            "503": (FaultMode.UNAVAILABLE, 0.5),
                            "429": (FaultMode.RATE_LIMITED, 0.5),
                        }[action]
                        proxy.set_fault(mode, rate, retry_after=rng.choice([1, 2, 5]), stall_for=3)
                        group.start_soon(clear_later, proxy, rng.uniform(1, 6))
                group.cancel_scope.cancel()
            # Heal: the network clears, every process is up, the apps stop writing.
            for proxy in proxies:
                proxy.clear()
            for server in servers:
                if not server.is_running():
                    server.start()
            for device in devices:
                device.kill_writer()
                if device.worker is None or device.worker.proc.poll() is not None:
                    device.kill_worker()
                    device.start_worker()
            healed = time.monotonic()
            backoff_at_heal = max(longest_backoff(d.db) for d in devices)
            still_waiting: list[str] = []
            while time.monotonic() - healed < 3 * HEAL_BOUND:
                if all(live_ops(d.db)[0] == 0 for d in devices):
                    break
                if not still_waiting and time.monotonic() - healed > 10:
                    still_waiting = [w for d in devices for w in waiting(d.db)] or ["-"]
                await anyio.sleep(0.2)  # bounded poll of other processes' progress
            heal_seconds = time.monotonic() - healed
            dead = sum(live_ops(d.db)[1] for d in devices)
            queued = set().union(*(queued_ids(d.db) for d in devices))
            for device in devices:
                device.kill_worker()
        notes, head = await server_notes(direct[0])
        # Divergence: each device pulls everything once more, then holds what the server holds.
        divergent = 0
        for device in devices:
            command = [sys.executable, "-c", _LAUNCHER, "sync", "--db", str(device.db)]
            sync = await anyio.run_process(
                [*command, "--remote", direct[0]],
                env={**os.environ, "NEXUS_STORE_TOKEN": TOKEN},
                check=False,
            )
            assert sync.returncode == 0, (sync.stdout + sync.stderr).decode(errors="replace")
            with NexusStore(device.db, model=Note) as store:
                local = {n.id: n for n in store.all()}
            expected = {i: Note.model_validate(c.data) for i, c in notes.items() if c.data}
            divergent += local != expected
    saved = set().union(*(d.saved for d in devices))
    return Report(
        faults=faults,
        saved=len(saved),
        on_server=len(notes),
        lost=len(saved - notes.keys() - queued),
        undelivered=len(saved & queued),
        duplicated=head - len(notes),
        divergent=divergent,
        dead=dead,
        heal_seconds=heal_seconds,
        backoff_at_heal=backoff_at_heal,
        still_waiting=still_waiting,
    )


@pytest.fixture
def anyio_backend() -> str:
    """The soak's proxies run on asyncio."""
    return "asyncio"


def check(report: Report) -> None:
    assert report.lost == 0
    assert report.undelivered == 0
    assert report.duplicated == 0
    assert report.divergent == 0
    assert report.dead == 0
    assert report.heal_seconds <= HEAL_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_ten_minutes_of_faults_lose_nothing(tmp_path: Path, seed: int) -> None:
    """10 minutes of random faults, then heal: lost, duplicated, divergent 0; queues empty."""
    report = await soak(tmp_path, 600, seed)
    print(f"\nsoak 600 s, seed {seed}: {report.line()}")
    check(report)


@pytest.mark.slow
async def test_a_short_fault_soak_loses_nothing(tmp_path: Path) -> None:
    """40 seconds of random faults, then heal: lost, duplicated, divergent 0; queues empty."""
    report = await soak(tmp_path, 40, 7)
    print(f"\nsoak 40 s: {report.line()}")
    check(report)
