"""Sync runs against the in-process server (MemoryBackend) and the fault-injecting wrapper."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import DatabaseError, SchemaError, SyncPriority, _codec
from nexus_store._database import Database
from nexus_store._store import NexusStore
from nexus_store.backends import (
    Change,
    Changes,
    OpResult,
    OpStatus,
    PushResult,
    RemoteBackend,
    RemoteOp,
)
from nexus_store.backends._memory import MemoryBackend
from nexus_store.queue import OpState
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.sync.device._device import SimulatedDevice
from nexus_store.sync.engine._engine import EngineConfig
from nexus_store.sync.engine._progress import SyncEvent, SyncPhase, SyncProgress, SyncStopReason
from nexus_store.sync.engine._rawtable import RawCollection, discover_collections
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.sync.engine._target import SyncTarget
from nexus_store.testing import FakeClock
from nexus_store.testing._faults import Fault, FaultyBackend

pytestmark = pytest.mark.anyio

TENANT = "default"


class Note(BaseModel):
    id: str
    text: str
    tags: list[str] = []
    done: bool = False


class Task(BaseModel):
    id: int
    title: str


def _store(clock: FakeClock, path: str | Database = ":memory:", **kw: Any) -> NexusStore[Note, str]:
    return NexusStore(path, model=Note, clock=clock, **kw)


class _Recorder(RemoteBackend):
    """Passes pushes through, remembering every op in the order it was sent."""

    def __init__(self, inner: RemoteBackend) -> None:
        self.inner = inner
        self.sent: list[RemoteOp] = []
        self.batches: list[int] = []

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        self.sent.extend(ops)
        self.batches.append(len(ops))
        return await self.inner.push(ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


class _Gate(RemoteBackend):
    """Applies a push on the inner server, then waits (forever, unless opened)."""

    def __init__(self, inner: RemoteBackend) -> None:
        self.inner = inner
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        result = await self.inner.push(ops)
        self.entered.set()
        await self.opened.wait()
        return result

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


async def _server_items(core: ServerCore, collection: str | None = None) -> list[Change]:
    changes = await core.pull(
        TENANT, 0, 10_000, collections=None if collection is None else [collection]
    )
    assert not changes.has_more
    return changes.changes


async def _drain(
    store: SyncTarget, backend: RemoteBackend, clock: FakeClock, *, runs: int = 60, **kw: Any
) -> list[Any]:
    """Run until the queue has no live op, moving the fake clock over backoffs."""
    summaries = []
    for _ in range(runs):
        summary = await SyncRunner(store, backend, clock=clock, **kw).run()
        summaries.append(summary)
        stats = store.queue.stats()
        if stats.live == 0:
            return summaries
        # Jump past every backoff and the remote's pause, as a scheduler waking later would.
        latest = max(op.next_attempt_at for op in store.queue.pending())
        if summary.paused_until is not None:
            latest = max(latest, summary.paused_until.timestamp())
        clock.set(max(clock.now(), latest) + 0.001)
    raise AssertionError(f"the queue did not drain in {runs} runs: {store.queue.stats()}")


# -- delivery ------------------------------------------------------------------------------------


async def test_offline_saves_then_sync_delivers_everything_once() -> None:
    """Saves made with no backend reachable are all delivered by one run, once each."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(250):
        store.save(Note(id=f"n{i}", text=f"t{i}"), priority=SyncPriority(i % 4))
    backend = MemoryBackend()
    summary = await SyncRunner(store, backend, batch_size=40).run()
    assert summary.pushed == 250
    assert summary.ok
    assert summary.stop_reason is SyncStopReason.DRAINED
    assert store.queue.stats().total == 0
    assert await backend.core.head(TENANT) == 250
    server = {c.item_id: c for c in await _server_items(backend.core)}
    assert server["n7"].data == {"id": "n7", "text": "t7", "tags": [], "done": False}
    assert all(store.stored_version(f"n{i}") == server[f"n{i}"].version for i in range(250))
    assert sum(p.pushed for p in summary.per_priority.values()) == 250
    assert summary.per_priority[SyncPriority.LOW].pushed == 62


async def test_critical_arrives_at_the_server_before_low() -> None:
    """The server applies ops priority first (CRITICAL lowest versions), then FIFO."""
    clock = FakeClock()
    store = _store(clock)
    order = [SyncPriority.LOW, SyncPriority.NORMAL, SyncPriority.CRITICAL, SyncPriority.HIGH] * 30
    for i, priority in enumerate(order):
        store.save(Note(id=f"n{i:03d}", text=priority.name), priority=priority)
    backend = MemoryBackend()
    await SyncRunner(store, backend, batch_size=25).run()
    arrived = sorted(await _server_items(backend.core), key=lambda c: c.version)
    priorities = [SyncPriority[c.data["text"]] for c in arrived if c.data is not None]
    assert priorities == sorted(priorities)
    critical_ids = [c.item_id for c in arrived if c.data and c.data["text"] == "CRITICAL"]
    assert critical_ids == sorted(critical_ids)


async def test_coalesced_writes_send_the_latest_state_at_the_most_urgent_priority() -> None:
    """Three saves of one item become one op: latest data, CRITICAL, sent before older LOWs."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(5):
        store.save(Note(id=f"low{i}", text="x"), priority=SyncPriority.LOW)
    store.save(Note(id="a", text="v1"), priority=SyncPriority.LOW)
    store.save(Note(id="a", text="v2"), priority=SyncPriority.NORMAL)
    store.save(Note(id="a", text="v3"), priority=SyncPriority.CRITICAL)
    recorder = _Recorder(MemoryBackend())
    await SyncRunner(store, recorder).run()
    assert recorder.sent[0].item_id == "a"
    assert [op.data["text"] for op in recorder.sent if op.item_id == "a" and op.data] == ["v3"]
    assert len(recorder.sent) == 6


async def test_per_item_order_is_kept_under_mixed_priorities_without_coalescing() -> None:
    """With coalesce=False an item's ops arrive in write order even when a later one is urgent."""
    clock = FakeClock()
    store = _store(clock, coalesce=False)
    store.save(Note(id="a", text="1"), priority=SyncPriority.LOW)
    store.save(Note(id="b", text="1"), priority=SyncPriority.NORMAL)
    store.save(Note(id="a", text="2"), priority=SyncPriority.NORMAL)
    store.delete("b", priority=SyncPriority.LOW)
    store.save(Note(id="a", text="3"), priority=SyncPriority.CRITICAL)
    recorder = _Recorder(MemoryBackend())
    summary = await SyncRunner(store, recorder, batch_size=2).run()
    assert summary.pushed == 5
    sent_a = [op.data["text"] for op in recorder.sent if op.item_id == "a" and op.data]
    assert sent_a == ["1", "2", "3"]
    assert [op.kind for op in recorder.sent if op.item_id == "b"] == ["upsert", "delete"]
    # The urgent write pulled its predecessors forward: item a went first.
    assert recorder.sent[0].item_id == "a"
    server = {c.item_id: c for c in await _server_items(recorder.inner.core)}  # type: ignore[attr-defined]
    assert server["a"].data == {"id": "a", "text": "3", "tags": [], "done": False}
    assert server["b"].deleted


# -- conflicts -----------------------------------------------------------------------------------


def _merge(op: RemoteOp, server: Change) -> dict[str, Any] | None:
    assert op.data is not None
    assert server.data is not None
    return {**server.data, "text": f"{server.data['text']}+{op.data['text']}"}


@pytest.mark.parametrize(
    ("policy", "b_later", "expected"),
    [
        ("lww", True, "b1"),
        ("lww", False, "a1"),
        ("server_wins", True, "a1"),
        (_merge, True, "a1+b1"),
    ],
    ids=["lww-b-newer", "lww-b-older", "server-wins", "resolver"],
)
async def test_two_clients_editing_one_item_converge_by_policy(
    policy: Any, b_later: bool, expected: str
) -> None:
    """Both clients end with the copy the server's conflict policy chose."""
    core = ServerCore(MemoryStorage(), conflict_policy=policy)
    clock_a = FakeClock()
    clock_b = FakeClock(clock_a.now() + (100 if b_later else -100))
    a, b = _store(clock_a), _store(clock_b)
    back_a, back_b = MemoryBackend(core), MemoryBackend(core)
    a.save(Note(id="x", text="a0"))
    await SyncRunner(a, back_a).run()
    await SyncRunner(b, back_b).run()
    assert b.get("x") == Note(id="x", text="a0")
    clock_a.advance(1)
    a.save(Note(id="x", text="a1"))
    b.save(Note(id="x", text="b1"))
    first = await SyncRunner(a, back_a).run()
    second = await SyncRunner(b, back_b).run()
    assert first.pushed == second.pushed == 1
    await SyncRunner(a, back_a).run()
    a_copy, b_copy = a.get("x"), b.get("x")
    assert a_copy is not None
    assert b_copy is not None
    assert (a_copy.text, b_copy.text) == (expected, expected)
    server = {c.item_id: c for c in await _server_items(core)}
    assert server["x"].data is not None
    assert server["x"].data["text"] == expected
    assert second.conflicts == (1 if expected == "a1" else 0)
    assert a.stored_version("x") == b.stored_version("x") == server["x"].version
    assert a.queue.stats().total == b.queue.stats().total == 0


# -- pull --------------------------------------------------------------------------------------


async def test_pull_reads_after_the_stored_cursor() -> None:
    """A second run pulls only changes made since the first; tombstones delete locally."""
    clock = FakeClock()
    core = ServerCore(MemoryStorage())
    writer, reader = _store(clock), _store(clock)
    for i in range(30):
        writer.save(Note(id=f"n{i}", text="v1"))
    await SyncRunner(writer, MemoryBackend(core)).run()
    first = await SyncRunner(reader, MemoryBackend(core), config=None, batch_size=10).run()
    assert first.pulled == 30
    assert reader.count() == 30
    cursor = reader.pull_cursor()
    assert cursor == await core.head(TENANT)
    assert (await SyncRunner(reader, MemoryBackend(core)).run()).pulled == 0
    writer.save(Note(id="n3", text="v2"))
    writer.delete("n4")
    await SyncRunner(writer, MemoryBackend(core)).run()
    third = await SyncRunner(reader, MemoryBackend(core)).run()
    assert third.pulled == 2
    assert reader.get("n3") == Note(id="n3", text="v2")
    assert reader.get("n4") is None
    assert reader.pull_cursor() > cursor


async def test_pull_pages_until_done() -> None:
    """Pulling more changes than a page takes several requests and gets them all."""
    clock = FakeClock()
    core = ServerCore(MemoryStorage())
    writer, reader = _store(clock), _store(clock)
    writer.save_many([Note(id=f"n{i}", text="x") for i in range(95)])
    await SyncRunner(writer, MemoryBackend(core)).run()
    summary = await SyncRunner(reader, MemoryBackend(core), config=EngineConfig(pull_page=10)).run()
    assert summary.pulled == 95
    assert summary.requests == 10


async def test_pull_never_overwrites_an_item_with_a_pending_write() -> None:
    """A remote change to an item edited locally (not yet pushed) leaves the local edit."""
    clock = FakeClock()
    core = ServerCore(MemoryStorage())
    a, b = _store(clock), _store(clock)
    a.save(Note(id="x", text="server"))
    await SyncRunner(a, MemoryBackend(core)).run()
    b.save(Note(id="x", text="local"))
    runner = SyncRunner(b, MemoryBackend(core), pull=True)
    # Pull only: push nothing this run (LOW is the only thing allowed on a metered phone).
    b.queue.nack([op.op_id for op in b.queue.lease(10)], "hold", retry_after=1000)
    summary = await runner.run()
    assert summary.pushed == 0
    copy = b.get("x")
    assert copy is not None
    assert copy.text == "local"


# -- cancellation and budget ---------------------------------------------------------------------


async def test_cancelling_mid_push_releases_the_leased_ops_untouched() -> None:
    """A run cancelled while its push is in flight gives its ops back; a resend applies once."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(20)])
    inner = MemoryBackend()
    gate = _Gate(inner)
    events: list[SyncEvent] = []
    runner = SyncRunner(store, gate, batch_size=50)
    runner.events.add_callback(events.append)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run)
            await gate.entered.wait()
            assert store.queue.stats().leased == 20
            group.cancel_scope.cancel()
    stats = store.queue.stats()
    assert (stats.leased, stats.pending) == (0, 20)
    assert all(op.attempts == 0 for op in store.queue.pending())
    assert len(events) == 1
    assert not events[0].success
    assert runner.last_summary is not None
    assert runner.last_summary.stop_reason is SyncStopReason.CANCELLED
    assert runner.last_summary.released == 20
    # The server had applied the batch; the resend is deduplicated by op id.
    again = await SyncRunner(store, inner).run()
    assert again.pushed == 20
    assert store.queue.stats().total == 0
    assert await inner.core.head(TENANT) == 20


async def test_budget_running_out_stops_the_run_and_gives_back_what_it_holds() -> None:
    """When the fake clock passes the budget mid-push, the run ends with BUDGET, ops released."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(10)])
    gate = _Gate(MemoryBackend())
    runner = SyncRunner(store, gate, budget=30)
    result: list[Any] = []

    async def run() -> None:
        result.append(await runner.run())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await gate.entered.wait()
            clock.advance(31)
    summary = result[0]
    assert summary.stop_reason is SyncStopReason.BUDGET
    assert summary.released == 10
    assert summary.pushed == 0
    assert store.queue.stats().pending == 10


# -- device --------------------------------------------------------------------------------------


async def test_low_waits_on_a_metered_network_and_nothing_goes_offline() -> None:
    """Metered: everything but LOW is sent; offline: nothing; unmetered: LOW goes too."""
    clock = FakeClock()
    store = _store(clock)
    store.save(Note(id="low", text="x"), priority=SyncPriority.LOW)
    store.save(Note(id="normal", text="x"), priority=SyncPriority.NORMAL)
    device = SimulatedDevice(connected=False)
    backend = MemoryBackend()
    offline = await SyncRunner(store, backend, device=device).run()
    assert offline.stop_reason is SyncStopReason.OFFLINE
    assert offline.requests == 0
    device.set(connected=True, metered=True)
    metered = await SyncRunner(store, backend, device=device).run()
    assert metered.pushed == 1
    assert store.is_pending("low")
    device.set(battery_low=True, metered=False)
    assert (await SyncRunner(store, backend, device=device).run()).pushed == 0
    device.set(battery_low=False)
    assert (await SyncRunner(store, backend, device=device).run()).pushed == 1
    assert not store.is_pending("low")


# -- failures ------------------------------------------------------------------------------------


async def test_dropped_responses_still_apply_every_op_exactly_once() -> None:
    """20% of pushes applied and their answers lost: retries drain the queue, one effect each."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(400)])
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, drop_response=0.2, seed=3)
    await _drain(store, faulty, clock, batch_size=20)
    assert faulty.dropped
    assert await inner.core.head(TENANT) == 400
    assert len(await _server_items(inner.core)) == 400
    assert all(store.stored_version(f"n{i}") for i in range(400))


async def test_retry_after_is_honoured_and_other_failures_back_off() -> None:
    """After 503s the remote backs off (the ops untouched); after a 429 no run sends
    anything before its Retry-After."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(5)])
    inner = MemoryBackend()
    faulty = FaultyBackend(
        inner, push_faults=[Fault.unavailable(), Fault.unavailable(), Fault.rate_limited(30)]
    )
    first = await SyncRunner(store, faulty).run()
    assert (first.failed, first.stop_reason) == (0, SyncStopReason.FAILURES)
    waits = []
    for _ in range(2):
        assert all(op.attempts == 0 for op in store.queue.pending())
        paused = await SyncRunner(store, faulty).run()
        assert paused.stop_reason is SyncStopReason.PAUSED
        assert paused.paused_until is not None
        until = paused.paused_until.timestamp()
        waits.append(until - clock.now())
        # Nothing is sent before the pause ends.
        assert faulty.calls["push"] == len(waits)
        clock.set(until + 0.001)
        await SyncRunner(store, faulty).run()  # probes (a pull), then pushes and fails again
    assert 0 <= waits[0] <= 0.5  # the probe backoff: ceilings of 0.5 s, then 1 s
    assert 0 <= waits[1] <= 1.0
    limited = store.queue.pending()[0]
    assert limited.attempts == 0  # neither 503s nor a 429 are the ops' failure
    clock.advance(29)
    paused = await SyncRunner(store, faulty).run()
    assert paused.stop_reason is SyncStopReason.PAUSED
    assert paused.paused_until is not None
    assert faulty.calls["push"] == 3
    clock.advance(2)
    final = await SyncRunner(store, faulty).run()
    assert final.pushed == 5
    assert faulty.calls["push"] == 4


async def test_a_server_error_is_charged_to_the_op_that_fails_alone() -> None:
    """A 500 on a batch is bisected to the op that fails alone: it alone counts an attempt."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(8)])
    poison = store.queue.pending()[5].op_id
    recorder = _Recorder(MemoryBackend())

    class FailsOnPoison(FaultyBackend):
        async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
            if any(op.op_id == poison for op in ops):
                raise Fault.server_error().error()
            return await super().push(ops)

    summary = await SyncRunner(store, FailsOnPoison(recorder), batch_size=8).run()
    assert summary.pushed == 7
    assert summary.failed == 1
    [op] = store.queue.pending()
    assert (op.op_id, op.attempts) == (poison, 1)
    assert op.next_attempt_at > clock.now()


async def test_a_poison_op_is_dead_lettered_and_the_rest_delivered() -> None:
    """An op the server rejects for good is dead-lettered with its reason; others all arrive."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(300)])
    store.queue.enqueue("note", "poison", store.queue.pending(limit=1)[0].payload, hlc="bad\x00")
    store.save_many([Note(id=f"m{i}", text="x") for i in range(300)])
    backend = MemoryBackend()
    summary = await SyncRunner(store, backend, batch_size=100).run()
    assert summary.pushed == 600
    assert summary.dead_lettered == 1
    assert not summary.ok
    dead = store.queue.dead()
    assert [op.item_id for op in dead] == ["poison"]
    assert dead[0].last_error is not None
    assert "NUL" in dead[0].last_error
    assert await backend.core.head(TENANT) == 600


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (_codec.encode({1: "an int key"}), "cannot be sent"),
        (_codec.encode(["a", "list"]), "not a record"),
        (b"\xc1", "cannot be decoded"),
    ],
)
async def test_an_op_the_wire_cannot_carry_is_dead_lettered_locally(
    payload: bytes, problem: str
) -> None:
    """Another producer queued what no server could accept: it dies here, the rest arrive."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(150)])
    store.queue.enqueue("note", "poison", payload)
    store.save_many([Note(id=f"m{i}", text="x") for i in range(150)])
    backend = MemoryBackend()
    summary = await SyncRunner(store, backend, batch_size=100).run()
    assert (summary.pushed, summary.dead_lettered) == (300, 1)
    [dead] = store.queue.dead()
    assert dead.item_id == "poison"
    assert problem in (dead.last_error or "")
    stats = store.queue.stats()
    assert (stats.pending, stats.leased, stats.dead) == (0, 0, 1)
    assert await backend.core.head(TENANT) == 300


async def test_a_batch_over_the_server_limit_is_split_until_it_fits() -> None:
    """A batch refused as too large (413) is halved until the server takes it."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(200)])
    recorder = _Recorder(MemoryBackend(ServerCore(MemoryStorage(), max_batch=30)))
    summary = await SyncRunner(store, recorder, batch_size=200).run()
    assert summary.pushed == 200
    assert summary.ok
    assert max(n for n in recorder.batches) == 200
    assert len({op.op_id for op in recorder.sent}) == 200


async def test_a_network_failure_stops_the_run_and_charges_no_op() -> None:
    """An unreachable remote: the run stops at once, pauses it, and no op counts an attempt."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(50)])
    faulty = FaultyBackend(MemoryBackend(), network_error=1.0)
    summary = await SyncRunner(store, faulty, batch_size=10).run()
    assert summary.stop_reason is SyncStopReason.FAILURES
    assert summary.failed == 0
    assert summary.paused_until is not None
    assert faulty.calls == {"push": 1, "pull": 0}
    assert store.queue.stats().pending == 50
    assert store.queue.stats().leased == 0
    assert all(op.attempts == 0 for op in store.queue.pending())


async def test_auth_failure_stops_the_run_at_once() -> None:
    """Refused credentials give the batch back untouched (no attempt) and stop the run."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(20)])
    faulty = FaultyBackend(MemoryBackend(), push_faults=[Fault.auth()])
    summary = await SyncRunner(store, faulty, batch_size=10).run()
    assert summary.stop_reason is SyncStopReason.AUTH
    assert summary.failed == 0
    assert summary.released == 20  # the batch sent and the one leased ahead
    assert faulty.calls == {"push": 1, "pull": 0}
    assert all(op.attempts == 0 for op in store.queue.pending())
    assert store.queue.stats().leased == 0


# -- progress and events -------------------------------------------------------------------------


async def test_progress_per_priority_and_one_event_per_run() -> None:
    """Subscribers see done/total per priority grow to the totals, and one event per run."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(40):
        store.save(Note(id=f"n{i}", text="x"), priority=SyncPriority(i % 2))
    runner = SyncRunner(store, MemoryBackend(), batch_size=10)
    progress = runner.progress.subscribe()
    events = runner.events.subscribe()
    called: list[SyncEvent] = []
    runner.events.add_callback(called.append)
    summary = await runner.run()
    runner.streams.close()
    seen: list[SyncProgress] = [p async for p in progress]
    assert seen[0].done == 0
    assert seen[0].total == 40
    assert [p.done for p in seen if p.phase is SyncPhase.PUSH] == [0, 10, 20, 30, 40]
    last = seen[-1]
    assert last.phase is SyncPhase.DONE
    assert last.per_priority[SyncPriority.CRITICAL].done == 20
    assert last.per_priority[SyncPriority.HIGH].total == 20
    got = [e async for e in events]
    assert got == called
    assert len(got) == 1
    assert got[0].success
    assert got[0].run_id == summary.run_id
    assert got[0].task_id == "nexus-store.sync"
    assert "pushed 40" in got[0].message


# -- several collections, and no model -------------------------------------------------------------


async def test_several_stores_on_one_file_are_served_in_one_priority_order() -> None:
    """Two collections sharing a file: CRITICAL of both before NORMAL of either."""
    clock = FakeClock()
    db = Database(":memory:")
    notes = _store(clock, db)
    tasks: NexusStore[Task, int] = NexusStore(db, model=Task, clock=clock)
    notes.save(Note(id="n", text="x"), priority=SyncPriority.NORMAL)
    tasks.save(Task(id=1, title="t"), priority=SyncPriority.NORMAL)
    tasks.save(Task(id=2, title="t"), priority=SyncPriority.CRITICAL)
    notes.save(Note(id="c", text="x"), priority=SyncPriority.CRITICAL)
    recorder = _Recorder(MemoryBackend())
    summary = await SyncRunner([notes, tasks], recorder).run()
    assert summary.pushed == 4
    assert [(op.collection, op.item_id) for op in recorder.sent[:2]] in (
        [("task", 2), ("note", "c")],
        [("note", "c"), ("task", 2)],
    )
    assert tasks.stored_version(1)
    with pytest.raises(ValueError, match="once"):
        SyncRunner([notes, notes], recorder)


async def test_a_file_syncs_without_its_model() -> None:
    """RawCollection pushes a store file's queue and pulls rows the store reads back."""
    clock = FakeClock()
    core = ServerCore(MemoryStorage())
    other = _store(clock)
    other.save(Note(id="remote", text="from afar", tags=["a", "b"], done=True))
    await SyncRunner(other, MemoryBackend(core)).run()

    db = Database(":memory:")
    store = _store(clock, db)
    store.save(Note(id="local", text="here", tags=["x"]))
    assert discover_collections(db) == ["note"]
    raw = RawCollection(db, "note", clock=clock)
    summary = await SyncRunner(raw, MemoryBackend(core)).run()
    assert (summary.pushed, summary.pulled) == (1, 1)
    assert store.get("remote") == Note(id="remote", text="from afar", tags=["a", "b"], done=True)
    assert store.stored_version("local") == 2
    assert raw.pull_cursor() == 2
    other.delete("remote")
    await SyncRunner(other, MemoryBackend(core)).run()
    await SyncRunner(raw, MemoryBackend(core)).run()
    assert store.get("remote") is None


async def test_accepted_answer_for_an_unknown_op_acks_nothing() -> None:
    """Results that do not answer the sent ops never ack them."""

    class Liar(RemoteBackend):
        async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
            return PushResult(results=[OpResult(op_id="nope", status=OpStatus.ACCEPTED, version=1)])

        async def pull(
            self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
        ) -> Changes:
            return Changes(changes=[], cursor=cursor)

    clock = FakeClock()
    store = _store(clock)
    store.save(Note(id="a", text="x"))
    summary = await SyncRunner(store, Liar()).run()
    assert summary.pushed == 0
    assert summary.failed == 1
    assert store.queue.stats().count(state=OpState.PENDING) == 1


class _BrokenAcks:
    """A store whose acks fail in the database (everything else delegates)."""

    def __init__(self, store: NexusStore[Note, str]) -> None:
        self.store = store
        self.collection = store.collection
        self.queue = store.queue
        self.database = store.database
        self.clock = store.clock

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        raise DatabaseError("disk I/O error (injected)")

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        raise DatabaseError("disk I/O error (injected)")

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        return self.store.apply_remote_changes(changes, overwrite_pending=overwrite_pending)

    def pull_cursor(self) -> int:
        return self.store.pull_cursor()

    def set_pull_cursor(self, cursor: int) -> None:
        self.store.set_pull_cursor(cursor)


async def test_a_local_failure_is_raised_as_itself_and_nothing_stays_leased() -> None:
    """A database error while acking surfaces as that error; every leased op goes back."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(30)])
    broken = _BrokenAcks(store)
    assert isinstance(broken, SyncTarget)
    events: list[SyncEvent] = []
    runner = SyncRunner(broken, MemoryBackend(), batch_size=10)
    runner.events.add_callback(events.append)
    with pytest.raises(DatabaseError, match="injected"):
        await runner.run()
    stats = store.queue.stats()
    assert (stats.leased, stats.pending) == (0, 30)
    assert runner.last_summary is not None
    assert runner.last_summary.stop_reason is SyncStopReason.ERROR
    assert [e.success for e in events] == [False]


class Sub(BaseModel):
    kind: str
    size: float


class Record(BaseModel):
    id: int
    name: str
    sub: Sub
    scores: dict[str, int] = {}
    flag: bool | None = None


async def test_raw_collection_keeps_int_ids_nested_models_and_dicts() -> None:
    """Rows pulled without the model read back through the model as they were written."""
    clock = FakeClock()
    core = ServerCore(MemoryStorage())
    writer: NexusStore[Record, int] = NexusStore(":memory:", model=Record, clock=clock)
    original = Record(id=7, name="r", sub=Sub(kind="k", size=1.5), scores={"a": 1}, flag=False)
    writer.save(original)
    await SyncRunner(writer, MemoryBackend(core)).run()
    db = Database(":memory:")
    reader: NexusStore[Record, int] = NexusStore(db, model=Record, clock=clock)
    pulled = await SyncRunner(RawCollection(db, "record"), MemoryBackend(core)).run()
    assert pulled.pulled == 1
    assert reader.get(7) == original
    assert reader.stored_version(7) == 1


def test_raw_collection_refuses_tables_a_store_did_not_make() -> None:
    """No such table, or a table without the store's bookkeeping columns: SchemaError."""
    db = Database(":memory:")
    db.execute("CREATE TABLE plain (id TEXT PRIMARY KEY, x)")
    with pytest.raises(SchemaError, match="no collection"):
        RawCollection(db, "missing")
    with pytest.raises(SchemaError, match="not made by a store"):
        RawCollection(db, "plain")
    assert discover_collections(db) == []


class _Overlap(RemoteBackend):
    """Holds each push until the next one arrives (or a short wait passes), noting which
    pushes were on the wire together."""

    def __init__(self, inner: RemoteBackend) -> None:
        self.inner = inner
        self.flying: list[list[RemoteOp]] = []
        self.together: list[list[list[RemoteOp]]] = []
        self.arrived = anyio.Event()

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        self.flying.append(list(ops))
        if len(self.flying) > 1:
            self.together.append([list(batch) for batch in self.flying])
        self.arrived.set()
        self.arrived = anyio.Event()
        with anyio.move_on_after(0.05):
            await self.arrived.wait()
        self.flying.remove(list(ops))
        return await self.inner.push(ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


async def test_batches_of_one_priority_go_two_at_a_time_and_never_share_an_item() -> None:
    """Once the remote answered, two batches of one priority may be on the wire together
    (never more, never of two priorities, never two ops of one item); every op arrives
    once and the server sees the priorities in order."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(400):
        store.save(Note(id=f"n{i % 150}", text=f"t{i}"), priority=SyncPriority(i // 100))

    def critical(item_id: object) -> bool:
        # Coalescing keeps an item's most urgent priority: n0..n99 CRITICAL, the rest HIGH.
        return int(str(item_id)[1:]) < 100

    core = ServerCore(MemoryStorage())
    backend = _Overlap(MemoryBackend(core))
    summary = await SyncRunner(store, backend, batch_size=20).run()
    assert summary.ok
    assert store.queue.stats().total == 0
    assert backend.together, "no two batches were ever on the wire together"
    for batches in backend.together:
        assert len(batches) == 2
        ops = [op for batch in batches for op in batch]
        assert len({op.item_id for op in ops}) == len(ops)
        assert len({critical(op.item_id) for op in ops}) == 1
    stored = {c.item_id: c for c in await _server_items(core)}
    order = sorted(stored.values(), key=lambda c: c.version)
    assert [critical(c.item_id) for c in order] == [True] * 100 + [False] * 50
    assert {k: v.data["text"] for k, v in stored.items() if v.data} == {
        f"n{i % 150}": f"t{i}" for i in range(400)
    }


class _SavesDuringPush(RemoteBackend):
    """On its first push, saves more items into the store before answering (an app saving
    while the run's last batch is on the wire)."""

    def __init__(self, inner: RemoteBackend, store: NexusStore[Note, str], count: int) -> None:
        self.inner = inner
        self.store = store
        self.count = count
        self.batches: list[list[str]] = []

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        self.batches.append([str(op.item_id) for op in ops])
        if len(self.batches) == 1:
            for i in range(self.count):
                self.store.save(Note(id=f"late{i}", text="saved during the push"))
        return await self.inner.push(ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        return await self.inner.pull(cursor, limit, collections=collections)


@pytest.mark.parametrize("early", [3, 10], ids=["short-batch", "full-batch"])
async def test_saves_made_while_the_last_batch_is_on_the_wire_go_in_the_same_run(
    early: int,
) -> None:
    """A lease that found the queue without more (fewer ops than the batch size, or all
    that were pending) is not followed by another while its batch is on the wire; what was
    saved meanwhile still goes in the same run, in a batch of its own."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(early):
        store.save(Note(id=f"early{i}", text="queued before the run"))
    backend = _SavesDuringPush(MemoryBackend(), store, count=4)
    summary = await SyncRunner(store, backend, batch_size=10, clock=clock).run()
    assert summary.pushed == early + 4
    assert summary.remaining == 0
    assert summary.stop_reason is SyncStopReason.DRAINED
    assert backend.batches == [
        [f"early{i}" for i in range(early)],
        [f"late{i}" for i in range(4)],
    ]
    assert store.queue.stats().total == 0


def _count_leases(runner: SyncRunner, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The runner's leases from now on, each as whether it counted the run's work."""
    calls: list[bool] = []
    lease_batch = runner._lease_batch

    def counted(allowed: frozenset[SyncPriority], count: bool = False) -> Any:
        calls.append(count)
        return lease_batch(allowed, count)

    monkeypatch.setattr(runner, "_lease_batch", counted)
    return calls


async def test_a_run_of_one_batch_leases_it_with_the_count_and_looks_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that finds one batch's worth of work: one lease for it (with the count of the
    run's work), one look after it was settled, and no lease while it is on the wire."""
    clock = FakeClock()
    store = _store(clock)
    for i in range(10):
        store.save(Note(id=f"n{i}", text="x"))
    runner = SyncRunner(store, MemoryBackend(), batch_size=10, clock=clock, pull=False)
    calls = _count_leases(runner, monkeypatch)
    summary = await runner.run()
    assert summary.pushed == 10
    assert calls == [True, False]


async def test_a_run_that_finds_nothing_to_send_looks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing eligible and nothing sent: no second look (a worker-thread step and a write
    transaction less for every idle run); an op backing off is still counted as left."""
    clock = FakeClock()
    store = _store(clock)
    runner = SyncRunner(store, MemoryBackend(), batch_size=10, clock=clock, pull=False)
    calls = _count_leases(runner, monkeypatch)
    summary = await runner.run()
    assert (summary.pushed, summary.stop_reason, calls) == (0, SyncStopReason.DRAINED, [True])
    store.save(Note(id="n1", text="x"))
    (op,) = store.queue.lease(1, 30.0)
    store.queue.nack([op.op_id], "busy", retry_after=60.0)
    calls.clear()
    summary = await runner.run()
    assert (summary.pushed, summary.remaining, summary.stop_reason) == (
        0,
        1,
        SyncStopReason.WAITING,
    )
    assert calls == [True]


async def test_a_run_holds_a_bounded_number_of_ops_when_settling_falls_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When settling the answers is slower than the wire, the run waits for it instead of
    leasing further: the ops it holds (leased, not yet settled) stay within a few batches,
    not the whole queue (memory, and the leased rows every lease skips over)."""
    clock = FakeClock()
    store = _store(clock)
    store.save_many([Note(id=f"n{i}", text="x") for i in range(600)])
    runner = SyncRunner(store, MemoryBackend(), batch_size=10, clock=clock, pull=False)
    held: list[int] = []
    settle = runner._settle_locally

    def slow_settle(run: Any, acks: Any, failures: Any) -> Any:
        held.append(len(run.held))
        time.sleep(0.003)  # (a worker thread) a busy file
        return settle(run, acks, failures)

    monkeypatch.setattr(runner, "_settle_locally", slow_settle)
    summary = await runner.run()
    assert summary.pushed == 600
    assert store.queue.stats().total == 0
    assert len(held) == 60
    # In flight, answered and waiting to be settled, and one leased ahead: a few batches.
    assert max(held) <= 6 * 10, max(held)
