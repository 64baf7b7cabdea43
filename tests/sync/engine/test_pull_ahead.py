"""A sync run's pull asks for the next page while it applies the current one.

Against the in-process server (MemoryBackend) through a thin wrapper that notes each
request, with a store whose commits of pulled pages can wait for, or fail beside, the
request ahead; and through a real ``nexus-store serve`` process with ``store.sync()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from pydantic import BaseModel

from nexus_store import DatabaseError
from nexus_store._changelog import ChangeOrigin
from nexus_store._quarantine import AppliedChanges
from nexus_store._remote import Change, Changes, PushResult, RemoteBackend, RemoteOp
from nexus_store._store import NexusStore
from nexus_store._watch import ChangeStream
from nexus_store.backends._http import HttpBackend
from nexus_store.backends._memory import MemoryBackend
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.sync.engine._engine import EngineConfig
from nexus_store.sync.engine._progress import SyncEvent, SyncPhase, SyncProgress, SyncStopReason
from nexus_store.sync.engine._runner import SyncRunner
from nexus_store.testing import FakeClock, ServerProcess
from nexus_store.testing._faults import Fault, FaultyBackend

pytestmark = pytest.mark.anyio

PAGE = 10
WAIT = 10.0
"""The most seconds a commit waits for the request ahead (it comes at once unless broken)."""


class Note(BaseModel):
    id: str
    text: str
    n: int = 0


class _Watched(RemoteBackend):
    """Pulls through a real backend, noting each request as it starts and ends.

    The request numbered ``hold`` (from 1) never answers: it waits until cancelled.
    """

    def __init__(self, inner: RemoteBackend, *, hold: int | None = None) -> None:
        self.inner = inner
        self.writer_aware = inner.writer_aware
        self.hold = hold
        self.started: list[int] = []
        """The cursor of each request, as it was sent."""
        self.ended: list[int] = []
        self.answers: list[Changes] = []
        self.cancelled: list[int] = []
        self.in_flight = 0
        self.holding = anyio.Event()
        self._cond = threading.Condition()

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        return await self.inner.push(ops, writer=writer)

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        with self._cond:
            self.started.append(cursor)
            self.in_flight += 1
            number = len(self.started)
            self._cond.notify_all()
        try:
            if number == self.hold:
                self.holding.set()
                await anyio.sleep_forever()
            changes = await self.inner.pull(
                cursor, limit, collections=collections, skip_writer=skip_writer
            )
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(cursor)
            raise
        else:
            self.answers.append(changes)
            return changes
        finally:
            with self._cond:
                self.in_flight -= 1
                self.ended.append(cursor)
                self._cond.notify_all()

    def has_more_after(self, cursor: int) -> bool:
        """Whether the page that moved the cursor to ``cursor`` said there is more."""
        return any(page.cursor == cursor and page.has_more for page in self.answers)

    def wait_for(self, cursor: int, *, ended: bool) -> bool:
        """Wait (in a worker thread) until the request at ``cursor`` started or ended."""
        seen = self.ended if ended else self.started
        with self._cond:
            return self._cond.wait_for(lambda: cursor in seen, timeout=WAIT)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Paced:
    """A store whose commit of a pulled page (with more to come) first waits until the
    request for the next page is out (``until="started"``) or answered (``"ended"``), in
    the page's transaction, and notes whether it came.

    ``fail_at``: the commit of that page (from 1) fails after the wait. ``gate_at``: the
    commit of that page says so (``entered``) and waits for ``release``.
    """

    def __init__(
        self,
        store: NexusStore[Note, str],
        backend: _Watched,
        *,
        until: str = "ended",
        fail_at: int | None = None,
        gate_at: int | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.collection = store.collection
        self.queue = store.queue
        self.database = store.database
        self.clock = store.clock
        self.until = until
        self.fail_at = fail_at
        self.gate_at = gate_at
        self.entered = anyio.Event()
        self.release = threading.Event()
        self.cursors: list[int] = []
        """The cursor of each page committed or tried, in order."""
        self.overlapped: list[bool] = []

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        return self.store.apply_ack(item_id, version)

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        return self.store.apply_acks(acks)

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        return self.store.apply_remote_changes(changes, overwrite_pending=overwrite_pending)

    def apply_pulled(self, changes: Iterable[Change]) -> AppliedChanges:
        return self.store.apply_pulled(changes)

    def pull_cursor(self) -> int:
        return self.store.pull_cursor()

    def set_pull_cursor(self, cursor: int) -> None:
        self.store.set_pull_cursor(cursor)
        self.cursors.append(cursor)
        if self.backend.has_more_after(cursor):
            self.overlapped.append(self.backend.wait_for(cursor, ended=self.until == "ended"))
        if len(self.cursors) == self.gate_at:
            anyio.from_thread.run_sync(self.entered.set)
            assert self.release.wait(WAIT)
        if len(self.cursors) == self.fail_at:
            raise DatabaseError("disk I/O error (injected)")


async def _server_with(count: int, clock: FakeClock) -> tuple[ServerCore, list[Note]]:
    """An in-process server holding ``count`` notes written by another store."""
    core = ServerCore(MemoryStorage())
    writer: NexusStore[Note, str] = NexusStore(":memory:", model=Note, clock=clock)
    notes = [Note(id=f"n{i:03d}", text=f"note {i}", n=i) for i in range(count)]
    writer.save_many(notes)
    assert (await SyncRunner(writer, MemoryBackend(core)).run()).pushed == count
    writer.close()
    return core, notes


def _reader(clock: FakeClock) -> NexusStore[Note, str]:
    return NexusStore(":memory:", model=Note, clock=clock)


def _pulled_ids(stream: ChangeStream, limit: int) -> list[str | int]:
    """The ids of the remote changes a change stream logged, in order (what is there now)."""
    ids: list[str | int] = []
    for _ in range(limit + 1):
        change = stream.get(timeout=0)
        if change is None:
            return ids
        assert change.origin is ChangeOrigin.REMOTE
        ids.append(change.item_id)
    raise AssertionError(f"more than {limit} changes logged")


# -- the pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("count", [95, 100])
async def test_pages_are_applied_once_in_order_while_the_next_is_on_the_wire(count: int) -> None:
    """Each page's commit waits for the next page's answer: that only comes if it was asked
    for before the commit. Every change is applied once, in order, each page with its
    cursor; the last page asks for nothing more; the run counts every request."""
    clock = FakeClock()
    core, notes = await _server_with(count, clock)
    reader = _reader(clock)
    backend = _Watched(MemoryBackend(core))
    paced = _Paced(reader, backend)
    progress: list[SyncProgress] = []
    runner = SyncRunner(paced, backend, config=EngineConfig(pull_page=PAGE))
    runner.progress.add_callback(progress.append)
    with reader.watch() as stream, anyio.fail_after(WAIT):
        summary = await runner.run()
        logged = _pulled_ids(stream, count)
    pages = -(-count // PAGE)
    assert summary.pulled == count
    assert summary.requests == len(backend.started) == pages
    assert backend.started == [PAGE * i for i in range(pages)]
    assert [page.has_more for page in backend.answers] == [True] * (pages - 1) + [False]
    assert paced.cursors == [min(PAGE * (i + 1), count) for i in range(pages)]
    assert paced.overlapped == [True] * (pages - 1)
    assert logged == [note.id for note in notes]
    assert reader.all() == notes
    assert reader.pull_cursor() == count
    pulled = [p.pulled for p in progress if p.phase is SyncPhase.PULL]
    assert pulled == [min(PAGE * (i + 1), count) for i in range(pages)]
    assert backend.in_flight == 0


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "stop", "paused"),
    [
        (Fault.unavailable(), SyncStopReason.FAILURES, True),
        (Fault.network(), SyncStopReason.FAILURES, True),
        (Fault.rate_limited(retry_after=60), SyncStopReason.RATE_LIMITED, True),
        (Fault.auth(), SyncStopReason.AUTH, True),
        (Fault.server_error(), SyncStopReason.DRAINED, False),
        (Fault.permanent(), SyncStopReason.DRAINED, False),
    ],
    ids=lambda value: getattr(getattr(value, "kind", None), "value", None),
)
async def test_a_failed_request_ahead_is_handled_after_the_page_before(
    fault: Fault, stop: SyncStopReason, paused: bool
) -> None:
    """The second page's request fails while the first page is applied: the first page is
    kept, then the failure is handled as a failed pull of that page (error, pause, stop),
    and nothing more is asked. A later run goes on from there."""
    clock = FakeClock()
    core, notes = await _server_with(30, clock)
    reader = _reader(clock)
    faulty = FaultyBackend(MemoryBackend(core), pull_faults=[None, fault])
    backend = _Watched(faulty)
    paced = _Paced(reader, backend)
    with anyio.fail_after(WAIT):
        summary = await SyncRunner(paced, backend, config=EngineConfig(pull_page=PAGE)).run()
    error = fault.error()
    assert summary.error == f"pull: {type(error).__name__}: {error}"
    assert summary.stop_reason is stop
    assert (summary.paused_until is not None) is paused
    assert summary.pulled == 10
    assert summary.requests == 2
    assert backend.started == [0, 10]
    assert paced.overlapped == [True]  # the failure came while the first page was applied
    assert paced.cursors == [10]
    assert reader.pull_cursor() == 10
    assert reader.all() == notes[:10]
    clock.advance(3600)  # past the pause
    with anyio.fail_after(WAIT):
        later = await SyncRunner(
            reader, MemoryBackend(core), config=EngineConfig(pull_page=PAGE)
        ).run()
    assert later.pulled == 20
    assert reader.all() == notes


async def test_a_failed_apply_cancels_the_request_ahead_and_raises_as_itself() -> None:
    """The second page's commit fails while the third page's request is on the wire: that
    request is cancelled, the error is raised as itself, and the first page stays."""
    clock = FakeClock()
    core, notes = await _server_with(50, clock)
    reader = _reader(clock)
    backend = _Watched(MemoryBackend(core), hold=3)
    paced = _Paced(reader, backend, until="started", fail_at=2)
    events: list[SyncEvent] = []
    runner = SyncRunner(paced, backend, config=EngineConfig(pull_page=PAGE))
    runner.events.add_callback(events.append)
    with anyio.fail_after(WAIT), pytest.raises(DatabaseError, match="injected") as raised:
        await runner.run()
    assert type(raised.value) is DatabaseError
    assert backend.started == [0, 10, 20]
    assert backend.cancelled == [20]
    assert backend.in_flight == 0
    assert paced.cursors == [10, 20]
    assert reader.pull_cursor() == 10  # the second page rolled back with its cursor
    assert reader.all() == notes[:10]
    summary = runner.last_summary
    assert summary is not None
    assert summary.stop_reason is SyncStopReason.ERROR
    assert summary.error == "DatabaseError: disk I/O error (injected)"
    assert (summary.pulled, summary.requests) == (10, 3)
    assert [event.success for event in events] == [False]


# -- stopping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_budget_running_out_with_the_next_page_on_the_wire_ends_its_request() -> None:
    """The budget runs out while the second page's request is out: the request is
    cancelled before the run returns, the first page is kept and nothing more applied."""
    clock = FakeClock()
    core, notes = await _server_with(30, clock)
    reader = _reader(clock)
    backend = _Watched(MemoryBackend(core), hold=2)
    paced = _Paced(reader, backend, until="started")
    runner = SyncRunner(paced, backend, config=EngineConfig(pull_page=PAGE), budget=30)
    result: list[Any] = []

    async def run() -> None:
        result.append(await runner.run())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await backend.holding.wait()
            clock.advance(31)
    summary = result[0]
    assert summary.stop_reason is SyncStopReason.BUDGET
    assert backend.cancelled == [10]
    assert backend.in_flight == 0
    assert (summary.pulled, summary.requests) == (10, 2)
    assert paced.cursors == [10]
    assert reader.all() == notes[:10]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_run_cancelled_while_a_page_is_applied_applies_none_after_it() -> None:
    """The run is cancelled while the first page commits and the second page has come: the
    first page finishes (its transaction is never cut), the second is not applied."""
    clock = FakeClock()
    core, notes = await _server_with(30, clock)
    reader = _reader(clock)
    backend = _Watched(MemoryBackend(core))
    paced = _Paced(reader, backend, gate_at=1)
    events: list[SyncEvent] = []
    runner = SyncRunner(paced, backend, config=EngineConfig(pull_page=PAGE))
    runner.events.add_callback(events.append)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run)
            await paced.entered.wait()
            group.cancel_scope.cancel()
            paced.release.set()
    assert [event.success for event in events] == [False]
    assert [page.cursor for page in backend.answers] == [10, 20]  # the second page came
    assert paced.cursors == [10]
    assert backend.in_flight == 0
    assert reader.pull_cursor() == 10
    assert reader.all() == notes[:10]


# -- through a server process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``nexus-store serve`` process on SQLite for this module."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens={"tok": "pull-ahead"}) as running:
        yield running


def test_store_sync_pulls_thousands_of_changes_from_a_server_process_once_each(
    server: ServerProcess, tmp_path: Path
) -> None:
    """3,500 changes written by another store (four default pages) reach a fresh store
    through ``store.sync()``: every item with its data, each change applied once."""
    count = 3_500
    notes = [Note(id=f"n{i:05d}", text=f"note {i} " + "x" * 100, n=i) for i in range(count)]
    with NexusStore[Note, str](
        tmp_path / "writer.db", model=Note, backend=HttpBackend(server.base_url, token="tok")
    ) as writer:
        writer.save_many(notes)
        assert writer.sync().pushed == count
    with NexusStore[Note, str](
        tmp_path / "reader.db", model=Note, backend=HttpBackend(server.base_url, token="tok")
    ) as reader:
        with reader.watch() as stream:
            summary = reader.sync()
            logged = _pulled_ids(stream, count)
        assert summary.ok
        assert summary.pulled == count
        assert summary.requests == 4  # 1,000 a page, and no request after the last
        assert logged == [note.id for note in notes]  # once each, in order
        assert reader.count() == count
        assert reader.all() == notes
