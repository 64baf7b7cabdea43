"""WalChangeSource: waking on another connection's commits to a store file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from nexus_store.sync._wal_watch import SETTLE_WAKES, WalChangeSource, inotify_available

pytestmark = pytest.mark.anyio


def _commit(path: Path, value: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.skipif(not inotify_available(), reason="inotify is Linux's")
async def test_a_commit_wakes_at_once_and_again_once_the_writer_is_done(tmp_path: Path) -> None:
    """A commit wakes the watcher at once and again at each settle delay after the last
    write (the WAL index that makes it visible is written through memory: no event)."""
    path = tmp_path / "app.db"
    _commit(path, 0)
    source = WalChangeSource(path)
    wakes: list[float] = []
    written: list[float] = []
    last_settle = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            async for _ in source.changes():
                wakes.append(time.monotonic())
                if written and wakes[-1] - written[0] >= SETTLE_WAKES[-1]:
                    last_settle.set()

        tg.start_soon(watch)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(_commit, path, 1)
            written.append(time.monotonic())
            await last_settle.wait()
        source.close()
        tg.cancel_scope.cancel()
    assert len(wakes) >= 1 + len(SETTLE_WAKES)
