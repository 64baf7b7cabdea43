"""WalChangeSource: waking on another connection's commits to a store file."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nexus_store._database import Database
from nexus_store.sync import _wal_watch
from nexus_store.sync._wal_watch import (
    OWN_SETTLE_WAKES,
    SEEN_SETTLE,
    SETTLE_WAKES,
    WalChangeSource,
    after_seen,
    inotify_available,
    settle_looks,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not inotify_available(), reason="inotify is Linux's"),
]


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    """A WAL database another connection keeps open (as an app does: the last connection
    to close would checkpoint and remove the WAL and its index)."""
    path = tmp_path / "app.db"
    _commit(path, 0)
    keeper = sqlite3.connect(path)
    keeper.execute("SELECT count(*) FROM t").fetchall()
    yield path
    keeper.close()


def _commit(path: Path, value: int) -> None:
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.commit()
    finally:
        conn.close()


class Wakes:
    """Counts a source's wakes; ``reach(n)`` waits (bounded) until there were ``n``."""

    def __init__(self) -> None:
        self.count = 0
        self._event = anyio.Event()

    async def follow(self, source: WalChangeSource) -> None:
        async for _ in source.changes():
            self.count += 1
            self._event.set()
            self._event = anyio.Event()

    async def reach(self, n: int) -> None:
        with anyio.fail_after(10):
            while self.count < n:
                await self._event.wait()


async def test_each_commit_wakes_once(path: Path) -> None:
    """A commit wakes the watcher once (not once per write of its frames), and the settle
    wakes after it bring nothing new (SQLite's data_version did not change again)."""
    source = WalChangeSource(path)
    wakes = Wakes()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wakes.follow, source)
        await anyio.wait_all_tasks_blocked()
        for n in range(1, 4):
            await anyio.to_thread.run_sync(_commit, path, n)
            await wakes.reach(n)
        # to see that nothing more comes, the settle wakes' window must pass
        await anyio.sleep(SETTLE_WAKES[-1] * 3)
        source.close()
        tg.cancel_scope.cancel()
    assert wakes.count == 3


async def test_a_write_that_is_no_commit_wakes_nobody(path: Path) -> None:
    """Bytes appended to the WAL without a commit (the index unchanged: a commit still under
    way) wake nobody; the next commit does."""
    source = WalChangeSource(path)
    wakes = Wakes()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wakes.follow, source)
        await anyio.wait_all_tasks_blocked()
        with path.with_name("app.db-wal").open("ab") as wal:
            wal.write(b"\0" * 64)  # not a valid frame: SQLite ignores it
        await anyio.sleep(SETTLE_WAKES[-1] * 3)  # the settle wakes' window passes
        assert wakes.count == 0
        await anyio.to_thread.run_sync(_commit, path, 1)
        await wakes.reach(1)
        source.close()
        tg.cancel_scope.cancel()


async def test_the_owners_own_commits_wake_nobody(path: Path) -> None:
    """With ``own``: commits on the owner's connection (a worker's lease renewals, acks)
    wake nobody, even while its lock is held when the watcher looks; another connection's
    commit still wakes it once."""
    own = Database(path, durability="normal")
    source = WalChangeSource(path, own=own)
    wakes = Wakes()

    def renew(held: float) -> None:
        with own.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (-1)")
            time.sleep(held)  # the watcher's first look finds the lock busy

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wakes.follow, source)
            await anyio.wait_all_tasks_blocked()
            for held in (0.0, 0.002, 0.0):
                await anyio.to_thread.run_sync(renew, held)
            await anyio.sleep(SETTLE_WAKES[-1] * 3)
            assert wakes.count == 0
            await anyio.to_thread.run_sync(_commit, path, 1)
            await wakes.reach(1)
            await anyio.sleep(SETTLE_WAKES[-1] * 3)
            assert wakes.count == 1
            source.close()
            tg.cancel_scope.cancel()
    finally:
        own.close()


async def test_a_commit_while_the_owner_is_busy_still_wakes(path: Path) -> None:
    """Another connection commits while the owner's lock is held past every settle wake:
    the last look that cannot tell counts as a change (never a wake too few)."""
    own = Database(path, durability="normal")
    source = WalChangeSource(path, own=own)
    wakes = Wakes()
    held, release = threading.Event(), threading.Event()

    def busy() -> None:  # e.g. a long read of ours, in a worker thread
        with own.lock:
            held.set()
            release.wait(10)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wakes.follow, source)
            await anyio.wait_all_tasks_blocked()
            holder = threading.Thread(target=busy)
            holder.start()
            assert held.wait(10)
            try:
                await anyio.to_thread.run_sync(_commit, path, 1)
                await wakes.reach(1)
            finally:
                release.set()
                holder.join(10)
            source.close()
            tg.cancel_scope.cancel()
    finally:
        own.close()


def test_a_commit_seen_drops_the_quick_looks_left() -> None:
    """Once a settle look saw the commit, the quick looks left are dropped; the margin
    (the looks at least SEEN_SETTLE away) stays."""
    due = settle_looks([], False, 100.0)
    seen_at = 100.002
    left = after_seen([when for when in due if when > seen_at], seen_at)
    assert left == [when for when in due if when >= seen_at + SEEN_SETTLE]
    assert left == [100.0 + wait for wait in SETTLE_WAKES if wait >= 0.002 + SEEN_SETTLE]
    assert len(left) >= 2  # 50 and 100 ms: a margin, not the quick series


def test_settle_looks_after_an_own_write_keep_what_another_commit_needs() -> None:
    """Another process's write brings the quick series; the owner's own write brings the
    slow pair, and keeps the next look due if it is sooner; a stream of own writes (a
    sync run's) neither piles looks up nor puts the next one off for ever."""
    foreign = settle_looks([], False, 100.0)
    assert foreign == [100.0 + wait for wait in SETTLE_WAKES]
    assert settle_looks([], True, 100.0) == [100.0 + wait for wait in OWN_SETTLE_WAKES]
    mixed = settle_looks(foreign, True, 100.003)
    assert mixed == [foreign[0]] + [100.003 + wait for wait in OWN_SETTLE_WAKES]
    due: list[float] = []
    now, looked = 100.0, [100.0]
    for _ in range(1000):  # an own write every ms; the looks due meanwhile are made
        now += 0.001
        while due and due[0] <= now:
            looked.append(due.pop(0))
        due = settle_looks(due, True, now)
        assert len(due) <= 1 + len(OWN_SETTLE_WAKES)
    gaps = [b - a for a, b in itertools.pairwise(looked)]
    assert len(looked) > 50
    assert max(gaps) <= OWN_SETTLE_WAKES[0] + 0.0011


async def test_the_owners_writes_bring_few_looks(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looks counted: the owner's own commits cost the watcher a few looks each, not the
    quick series another process's commit gets; a commit of another process right after
    one of the owner's still wakes it."""
    own = Database(path, durability="normal")
    source = WalChangeSource(path, own=own)
    wakes = Wakes()
    looks = 0
    counted = _wal_watch._OwnCommitCounter.changed

    def changed(self: _wal_watch._OwnCommitCounter) -> bool | None:
        nonlocal looks
        looks += 1
        return counted(self)

    monkeypatch.setattr(_wal_watch._OwnCommitCounter, "changed", changed)

    def renew() -> None:
        with own.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (-1)")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wakes.follow, source)
            await anyio.wait_all_tasks_blocked()
            for _ in range(5):
                await anyio.to_thread.run_sync(renew)
                await anyio.sleep(0.2)  # every look of this write is over
            own_looks, looks = looks, 0
            # each write: a look as its events come, and the slow pair (a write may
            # raise its events in more than one batch: a look each)
            assert own_looks <= 5 * (len(OWN_SETTLE_WAKES) + 3), own_looks
            assert wakes.count == 0
            await anyio.to_thread.run_sync(_commit, path, 1)
            await wakes.reach(1)
            await anyio.sleep(SETTLE_WAKES[-1] * 2)
            assert looks >= 3  # another's commit: looks until seen, then the margin
            await anyio.to_thread.run_sync(renew)
            await anyio.to_thread.run_sync(_commit, path, 2)  # just after the owner's
            await wakes.reach(2)
            source.close()
            tg.cancel_scope.cancel()
    finally:
        own.close()


async def test_the_last_commit_of_a_burst_wakes(path: Path) -> None:
    """Commits back to back (each durable, so each lands a little after its frames): a
    wake comes after the last of them landed, however the looks fell."""
    source = WalChangeSource(path)
    reader = sqlite3.connect(path, check_same_thread=False)
    seen: list[int] = []
    woke = anyio.Event()

    async def follow() -> None:
        nonlocal woke
        async for _ in source.changes():
            seen.append(reader.execute("SELECT max(v) FROM t").fetchone()[0])
            woke.set()
            woke = anyio.Event()

    def burst(first: int) -> None:
        for n in range(first, first + 30):
            _commit(path, n)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()
            for first in (100, 200, 300):
                await anyio.to_thread.run_sync(burst, first)
                with anyio.fail_after(5):
                    while not seen or seen[-1] != first + 29:
                        await woke.wait()
            source.close()
            tg.cancel_scope.cancel()
    finally:
        reader.close()
