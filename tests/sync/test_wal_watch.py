"""WalChangeSource: waking on another connection's commits to a store file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nexus_store._database import Database
from nexus_store.sync._wal_watch import SETTLE_WAKES, WalChangeSource, inotify_available

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
