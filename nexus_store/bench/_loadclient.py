"""One client process of a sync load run: simulated clients, each with its own store file.

Started by :mod:`._loadrun` as ``python -m nexus_store.bench._loadclient``. It reads its
orders (one JSON line) on stdin, opens its clients' stores, prints ``{"type": "ready"}``,
waits for the start time (a second JSON line), runs the load, drains, and prints its
counts (``{"type": "result", ...}``); ``{"type": "progress", ...}`` lines come every second
in between. Everything it prints on stdout is one JSON object per line.

Each simulated client is what an app is: a :class:`~nexus_store.NexusStore` on its own
file (``durability="full"``), saving batches with ``save_many`` and pushing them with a
push-only :class:`~nexus_store.sync.engine.SyncRunner` through its own
:class:`~nexus_store.backends.HttpBackend` (wrapped to be timed, :mod:`._recorder`).

- **Closed loop** (no rate): save a batch, push until nothing is eligible, repeat.
- **Open loop** (a rate): saves happen on a fixed schedule whatever the server does (a
  slow server grows the local queues, as it would for an offline-first app); a second
  task per client pushes whatever is queued, one run at a time.
- **Pull** actions fetch one page of the run's collection after the client's cursor;
  **poke** actions open the server's event stream and wait for its first event.
- **CRITICAL probes**: every ``critical_every`` seconds one client of the process saves one
  ``CRITICAL`` item beside its load; the time from that save's return to the server's
  acceptance is the end-to-end latency under load.

Batches take priorities in a fixed pattern (of every 10: 1 ``HIGH``, 2 ``LOW``, 7
``NORMAL``), so a backlog drains by priority as it would in the field.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import psutil
from pydantic import BaseModel

from .._exceptions import RemoteError
from .._priority import SyncPriority
from .._store import NexusStore
from ..backends import HttpBackend
from ..queue import PrioritySyncQueue
from ..sync.engine import SyncRunner, SyncSummary
from ._plan import Action, action_cycle
from ._recorder import Recorder, TimedBackend, item_id

__all__ = ["BenchItem", "batch_priority", "main"]

_PATTERN = (SyncPriority.HIGH, SyncPriority.LOW, SyncPriority.LOW) + (SyncPriority.NORMAL,) * 7
_SAMPLE_EVERY = 1.0
_LAG_EVERY = 0.1
_THREADS = 8


class BenchItem(BaseModel):
    """What a simulated client saves: its id, who wrote it, and a body of filler."""

    id: str
    client: int
    seq: int
    body: str


def batch_priority(k: int) -> SyncPriority:
    """The priority of a client's ``k``-th batch (1 ``HIGH``, 2 ``LOW``, 7 ``NORMAL`` in 10)."""
    return _PATTERN[k % len(_PATTERN)]


@dataclass(frozen=True)
class Orders:
    """What the parent process asks of this one (see :mod:`._loadrun`)."""

    index: int
    clients: list[tuple[int, str]]
    """``(client number, server URL)`` of each client this process runs."""
    folder: str
    token: str | None
    collection: str
    batch: int
    payload_bytes: int
    warmup: float
    duration: float
    ops: int | None
    interval: float | None
    total_clients: int
    mix: tuple[int, int, int]
    timeout: float
    drain_timeout: float
    critical_every: float
    allow_insecure_http: bool
    client_durability: Literal["normal", "full"] = "normal"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Orders:
        """Read the orders line."""
        data = dict(data)
        data["clients"] = [(int(c), str(u)) for c, u in data["clients"]]
        data["mix"] = tuple(data["mix"])
        return cls(**data)


def _next_eligible(queue: PrioritySyncQueue) -> float | None:
    return queue.next_eligible_at()


class _Client:
    """One simulated client: a store file, a backend, a sync runner."""

    def __init__(self, number: int, url: str, orders: Orders, recorder: Recorder) -> None:
        self.number = number
        self.orders = orders
        self.recorder = recorder
        path = Path(orders.folder) / f"client-{number:05d}.db"
        self.store: NexusStore[BenchItem, str] = NexusStore(
            path,
            model=BenchItem,
            collection=orders.collection,
            durability=orders.client_durability,
        )
        http = HttpBackend(
            url,
            token=orders.token,
            timeout=orders.timeout,
            allow_insecure_http=orders.allow_insecure_http,
        )
        self.http = http
        self.backend = TimedBackend(http, recorder)
        self.runner = SyncRunner(self.store, self.backend, batch_size=orders.batch, pull=False)
        self.seq = 0
        self.written = 0
        self.batches = 0
        self.cursor = 0
        self.body = "x" * max(0, orders.payload_bytes - 40)
        self.wake = anyio.Event()
        self.load_over = False
        self.done_at: float | None = None
        self.busy: set[Action] = set()
        self.skipped = 0
        self.missed = 0

    def _items(self, count: int) -> list[BenchItem]:
        items = [
            BenchItem(
                id=item_id(self.number, self.seq + i),
                client=self.number,
                seq=self.seq + i,
                body=self.body,
            )
            for i in range(count)
        ]
        self.seq += count
        return items

    async def save_batch(self) -> int:
        """Save the next batch (in a worker thread: the commit waits for the disk)."""
        count = self.orders.batch
        if self.orders.ops is not None:
            count = min(count, self.orders.ops - self.written)
        if count <= 0:
            return 0
        items = self._items(count)
        priority = batch_priority(self.batches)
        self.batches += 1
        await anyio.to_thread.run_sync(self.store.save_many, items, priority)
        self.written += count
        self.recorder.note_saved(count)
        return count

    async def save_probe(self) -> None:
        """Save one ``CRITICAL`` item and start its clock."""
        (item,) = self._items(1)
        await anyio.to_thread.run_sync(self.store.save, item, SyncPriority.CRITICAL)
        self.recorder.probes[item.id] = time.time()
        self.recorder.note_saved(1)
        self.wake.set()

    @property
    def out_of_ops(self) -> bool:
        return self.orders.ops is not None and self.written >= self.orders.ops

    async def sync_once(self, until: float) -> SyncSummary:
        """One push-only run; if it left ops it could not send, wait (bounded) until they
        may go (a pause the server asked for, or a backoff)."""
        summary = await self.runner.run()
        if summary.remaining and summary.pushed == 0:
            await self._wait_for_eligible(summary, until)
        return summary

    async def _wait_for_eligible(self, summary: SyncSummary, until: float) -> None:
        now = time.time()
        if summary.paused_until is not None:
            when = summary.paused_until.timestamp()
        else:
            queue = self.store.queue
            eligible: float | None = await anyio.to_thread.run_sync(_next_eligible, queue)
            when = now if eligible is None else eligible
        await anyio.sleep(max(0.01, min(when, until, now + 1.0) - now))

    async def pull_once(self) -> None:
        """Fetch one page of the run's collection after this client's cursor."""
        try:
            page = await self.backend.pull(
                self.cursor, self.orders.batch, collections=[self.orders.collection]
            )
        except RemoteError:
            return  # counted by the backend wrapper
        self.cursor = page.cursor

    async def poke_once(self) -> None:
        """Open the event stream and wait for its first event."""
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.orders.timeout):
                async with self.http.watch() as heads:
                    async for _head in heads:
                        break
        except (RemoteError, TimeoutError) as exc:
            self.recorder.note_error(exc)
            return
        self.recorder.note_poke(time.perf_counter() - started)

    async def act(self, action: Action) -> None:
        if action == "pull":
            await self.pull_once()
        elif action == "poke":
            await self.poke_once()

    async def run_closed(self, load_end: float, drain_end: float, actions: list[Action]) -> None:
        """Closed loop: each action starts when the one before it ended."""
        k = 0
        while time.time() < load_end and not self.out_of_ops:
            action = actions[k % len(actions)]
            k += 1
            if action == "push":
                await self.save_batch()
                summary = await self.sync_once(load_end)
                while summary.pushed and summary.remaining and time.time() < load_end:
                    summary = await self.sync_once(load_end)
            else:
                await self.act(action)
        await self.drain(drain_end)

    async def run_open(
        self, start: float, load_end: float, drain_end: float, actions: list[Action], phase: float
    ) -> list[float]:
        """Open loop: actions on a fixed schedule; pushes by a task of their own.

        Returns:
            How late (seconds) each scheduled action started.
        """
        interval = self.orders.interval
        assert interval is not None
        late: list[float] = []
        async with anyio.create_task_group() as group:
            group.start_soon(self._pusher, drain_end)
            k = 0
            while not self.out_of_ops:
                due = start + phase + k * interval
                if due >= load_end:
                    break
                if time.time() >= load_end:
                    # Fallen behind: what was due before the end is not sent after it.
                    self.missed = math.ceil((load_end - start - phase) / interval) - k
                    break
                await anyio.sleep(max(0.0, due - time.time()))
                late.append(max(0.0, time.time() - due))
                action = actions[k % len(actions)]
                k += 1
                if action == "push":
                    await self.save_batch()
                    self.wake.set()
                elif action in self.busy:
                    self.skipped += 1
                else:
                    group.start_soon(self._act_once, action)
            self.load_over = True
            self.wake.set()
        return late

    async def _act_once(self, action: Action) -> None:
        self.busy.add(action)
        try:
            await self.act(action)
        finally:
            self.busy.discard(action)

    async def _pusher(self, drain_end: float) -> None:
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while True:
                summary = await self.sync_once(drain_end)
                if not summary.remaining or time.time() >= drain_end:
                    break
            if self.load_over:
                await self.drain(drain_end)
                return

    async def drain(self, drain_end: float) -> None:
        """Push until the queue is empty (or ``drain_end``); note when it emptied."""
        while time.time() < drain_end:
            live = await anyio.to_thread.run_sync(lambda: self.store.queue.stats().live)
            if live == 0:
                self.done_at = time.time()
                return
            await self.sync_once(drain_end)

    async def aclose(self) -> None:
        await self.backend.aclose()
        await anyio.to_thread.run_sync(self.store.close)


class _Process:
    """The clients of this process and what watches them."""

    def __init__(self, orders: Orders) -> None:
        self.orders = orders
        window = (orders.warmup, orders.warmup + orders.duration)
        self.recorder = Recorder(0.0, window)
        self.begin(math.inf)
        self.clients: list[_Client] = []
        self.pending: list[tuple[float, dict[str, int]]] = []
        self.lag_ms: list[float] = []
        self.late: list[float] = []
        self.cpu: dict[str, float] = {}
        self.running = True

    def begin(self, start: float) -> None:
        """Set the time the load starts (the same in every process)."""
        self.start = start
        self.recorder.start = start
        self.load_end = start + self.orders.warmup + self.orders.duration
        self.drain_end = self.load_end + self.orders.drain_timeout

    def open(self) -> None:
        for number, url in self.orders.clients:
            self.clients.append(_Client(number, url, self.orders, self.recorder))

    async def run(self) -> None:
        actions = action_cycle(self.orders.mix)
        limiter = anyio.to_thread.current_default_thread_limiter()
        # Few threads: the local work is short, and many threads contending for the GIL
        # would starve the event loop that times the requests.
        limiter.total_tokens = _THREADS
        await anyio.sleep(max(0.0, self.start - time.time()))
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(self._sample)
            watchers.start_soon(self._lag)
            watchers.start_soon(self._cpu)
            if self.orders.critical_every > 0:
                watchers.start_soon(self._probe)
            async with anyio.create_task_group() as group:
                for position, client in enumerate(self.clients):
                    group.start_soon(self._run_client, client, actions, position)
            self.running = False
            watchers.cancel_scope.cancel()
        await self._sample_once()

    async def _run_client(self, client: _Client, actions: list[Action], position: int) -> None:
        if self.orders.interval is None:
            await client.run_closed(self.load_end, self.drain_end, actions)
            return
        # Clients of all processes spread evenly over one interval.
        phase = self.orders.interval * client.number / self.orders.total_clients
        self.late += await client.run_open(
            self.start, self.load_end, self.drain_end, actions, phase
        )

    async def _probe(self) -> None:
        k = 0
        every = self.orders.critical_every
        while self.clients:
            await anyio.sleep(every)
            if time.time() >= self.load_end:
                return
            client = self.clients[k % len(self.clients)]
            k += 1
            # Only into a client still at work: a finished one would never push it.
            if not client.load_over and not client.out_of_ops and client.done_at is None:
                await client.save_probe()

    async def _sample_once(self) -> None:
        def counts() -> dict[str, int]:
            total = {p.name: 0 for p in SyncPriority}
            for client in self.clients:
                stats = client.store.queue.stats()
                for priority, by_state in stats.counts.items():
                    total[SyncPriority(priority).name] += sum(
                        n for state, n in by_state.items() if state.value in ("pending", "leased")
                    )
            return total

        by_priority = await anyio.to_thread.run_sync(counts)
        self.pending.append((round(time.time() - self.start, 3), by_priority))

    async def _sample(self) -> None:
        while True:
            await self._sample_once()
            r = self.recorder
            print(
                json.dumps(
                    {
                        "type": "progress",
                        "t": round(r.now(), 3),
                        "saved": r.saved,
                        "acked": sum(r.acked_at.values()),
                        "errors": sum(r.errors_all.values()),
                        "live": sum(self.pending[-1][1].values()),
                        "drained": sum(1 for c in self.clients if c.done_at is not None),
                    }
                ),
                flush=True,
            )
            await anyio.sleep(_SAMPLE_EVERY)

    async def _lag(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(_LAG_EVERY)
            lag = time.perf_counter() - before - _LAG_EVERY
            if self.recorder.in_window(self.recorder.now()):
                self.lag_ms.append(max(0.0, lag) * 1000)

    async def _cpu(self) -> None:
        me = psutil.Process()
        window = self.recorder.window
        await anyio.sleep(max(0.0, self.start + window[0] - time.time()))
        before, wall = me.cpu_times(), time.perf_counter()
        try:
            await anyio.sleep(max(0.0, self.start + window[1] - time.time()))
        finally:
            # Also when the clients finished (and the watchers were cancelled) before the
            # window closed: the last scheduled push may end a moment before it.
            after, seconds = me.cpu_times(), time.perf_counter() - wall
            used = (after.user - before.user) + (after.system - before.system)
            self.cpu = {"percent_of_core": round(100 * used / max(seconds, 1e-9), 1)}

    def result(self) -> dict[str, Any]:
        load_end = self.load_end - self.start
        done = [c.done_at - self.start - load_end for c in self.clients if c.done_at is not None]
        left = len(self.clients) - len(done)
        return {
            "type": "result",
            "index": self.orders.index,
            "clients": len(self.clients),
            "written": sum(c.seq for c in self.clients),
            "seqs": {str(c.number): c.seq for c in self.clients},
            "drained_clients": len(done),
            "undrained_clients": left,
            "drain_s": max(done) if done and not left else None,
            "pending": self.pending,
            "lag_ms": self.lag_ms,
            "late_s": self.late,
            "skipped_actions": sum(c.skipped for c in self.clients),
            "missed_actions": sum(c.missed for c in self.clients),
            "cpu": self.cpu,
            **self.recorder.to_json(),
        }

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def main() -> None:
    """Read the orders, run, print the result (see the module docstring)."""
    logging.getLogger("nexus_store").setLevel(logging.CRITICAL)  # the parent reports
    orders = Orders.from_json(json.loads(sys.stdin.readline()))
    Path(orders.folder).mkdir(parents=True, exist_ok=True)
    process = _Process(orders)
    process.open()
    print(json.dumps({"type": "ready", "index": orders.index}), flush=True)
    go = json.loads(sys.stdin.readline() or "{}")
    if "start" not in go:
        return  # the parent gave up before the start
    process.begin(float(go["start"]))

    async def body() -> None:
        try:
            await process.run()
        finally:
            await process.aclose()

    anyio.run(body)
    print(json.dumps(process.result()), flush=True)


if __name__ == "__main__":
    main()
