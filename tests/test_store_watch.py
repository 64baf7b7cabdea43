"""watch(): committed changes as an iterator and an async iterator, across connections too."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from nexus_store import ChangeKind, ChangeOrigin, LocalChange, NexusStore
from nexus_store._changelog import CHANGE_LOG_KEEP, ChangeLog
from nexus_store._database import Database
from nexus_store._watch import ChangeStream
from nexus_store.backends import Change
from nexus_store.testing import FakeClock

WAIT = 10.0  # upper bound for anything to arrive; the tests never wait this long when passing


class Note(BaseModel):
    """A plain record."""

    id: str
    text: str = ""


class Other(BaseModel):
    """A record of another collection."""

    id: str


def note_store(path: str | Path | Database = ":memory:") -> NexusStore[Note, str]:
    """A Note store with a fake clock."""
    return NexusStore[Note, str](path, model=Note, clock=FakeClock(start=1000.0))


def drain(stream: ChangeStream) -> list[LocalChange]:
    """Everything already available, without waiting."""
    out: list[LocalChange] = []
    while (change := stream.get(timeout=0)) is not None:
        out.append(change)
    return out


def test_watch_sees_saves_and_deletes_of_its_store_at_once() -> None:
    """Each save, save_many item and delete is one change, in commit order."""
    store = note_store()
    stream = store.watch()
    store.save(Note(id="a"))
    store.save_many([Note(id="b"), Note(id="c")])
    store.delete("a")
    changes = [stream.get(timeout=WAIT) for _ in range(4)]
    assert [(c.item_id, c.kind) for c in changes if c] == [
        ("a", ChangeKind.UPSERT),
        ("b", ChangeKind.UPSERT),
        ("c", ChangeKind.UPSERT),
        ("a", ChangeKind.DELETE),
    ]
    assert all(c is not None and c.origin is ChangeOrigin.LOCAL for c in changes)
    assert all(c is not None and c.collection == "note" and c.at == 1000.0 for c in changes)
    seqs = [c.seq for c in changes if c]
    assert seqs == sorted(seqs)
    assert stream.last_seq == seqs[-1]
    assert stream.get(timeout=0) is None


def test_watch_starts_now_unless_given_a_seq_to_resume_from() -> None:
    """Changes before watch() are not replayed; since= resumes after a seq."""
    store = note_store()
    store.save(Note(id="before"))
    live = store.watch()
    store.save(Note(id="after"))
    assert [c.item_id for c in drain(live)] == ["after"]
    everything = store.watch(since=0)
    # "before" was committed while no stream was open: it was never logged.
    assert [c.item_id for c in drain(everything)] == ["after"]
    store.save(Note(id="later"))
    resumed = store.watch(since=live.last_seq)
    assert [c.item_id for c in drain(resumed)] == ["later"]


def _logged(db: Database) -> int:
    return int(db.execute("SELECT count(*) FROM nx_changes")[0][0])


def _watchers(db: Database) -> int:
    return int(db.execute("SELECT count(*) FROM nx_watchers")[0][0])


def test_the_log_is_written_only_while_a_stream_is_open() -> None:
    """With no stream open a save writes no log row; each open stream is registered."""
    store = note_store()
    db = store.database
    store.save(Note(id="unwatched"))
    store.delete("unwatched")
    assert (_logged(db), _watchers(db)) == (0, 0)
    first, second = store.watch(), store.watch()
    assert _watchers(db) == 2
    store.save_many([Note(id="a"), Note(id="b")])
    store.delete("a")
    assert _logged(db) == 3
    first.close()
    first.close()  # idempotent
    store.save(Note(id="c"))
    assert _logged(db) == 4
    assert [c.item_id for c in drain(second)] == ["a", "b", "a", "c"]
    second.close()
    assert _watchers(db) == 0
    store.save(Note(id="d"))
    assert _logged(db) == 4


def test_a_stream_dropped_without_close_unregisters() -> None:
    """A stream that is garbage-collected removes its registration."""
    store = note_store()
    stream = store.watch()
    assert _watchers(store.database) == 1
    del stream
    gc.collect()
    assert _watchers(store.database) == 0
    # Collected while another thread holds the database: left for the next stream to remove.
    stream = store.watch()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.database.transaction():
            holding.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT)
    del stream
    gc.collect()  # must not block on the held lock
    release.set()
    holder.join(WAIT)
    assert _watchers(store.database) == 1
    store.watch().close()
    assert _watchers(store.database) == 0


def test_closing_the_store_unregisters_its_streams(tmp_path: Path) -> None:
    """Streams closed with their store leave no registration in the file."""
    path = tmp_path / "closing.db"
    store = note_store(path)
    store.watch()
    store.close()
    other = note_store(path)
    assert _watchers(other.database) == 0
    other.close()


def test_a_dead_process_registration_is_reaped(tmp_path: Path) -> None:
    """A process killed while watching leaves a row that the next opener removes."""
    path = tmp_path / "dead.db"
    child = textwrap.dedent(
        f"""
        import os
        from pydantic import BaseModel
        from nexus_store import NexusStore

        class Note(BaseModel):
            id: str
            text: str = ""

        store = NexusStore[Note, str]({str(path)!r}, model=Note)
        stream = store.watch()
        os._exit(0)  # no close, no finalizers: as if killed
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    raw = Database(path)
    assert _watchers(raw) == 1
    raw.close()
    store = note_store(path)
    assert _watchers(store.database) == 0
    store.save(Note(id="x"))
    assert _logged(store.database) == 0
    store.close()


def test_watch_follows_only_its_collection(tmp_path: Path) -> None:
    """Writes of another model in the same file are not in this store's stream."""
    db = Database(":memory:")
    notes = note_store(db)
    others = NexusStore[Other, str](db, model=Other)
    stream = notes.watch()
    others.save(Other(id="o"))
    notes.save(Note(id="n"))
    assert [c.item_id for c in drain(stream)] == ["n"]


def test_remote_changes_are_watched_with_their_origin() -> None:
    """Changes applied from the server show up with origin REMOTE."""
    store = note_store()
    stream = store.watch()
    store.apply_remote_changes(
        [Change(collection="note", item_id="r", version=3, data={"id": "r"}, hlc="")]
    )
    change = stream.get(timeout=WAIT)
    assert change is not None
    assert (change.item_id, change.origin, change.kind) == ("r", ChangeOrigin.REMOTE, "upsert")


def test_watch_sees_commits_of_another_connection(tmp_path: Path) -> None:
    """A second store object on the same file (its own connection) is seen by polling."""
    path = tmp_path / "two.db"
    reader = note_store(path)
    writer = note_store(path)
    stream = reader.watch(poll_interval=0.01)
    writer.save(Note(id="w1"))
    writer.delete("w1")
    first, second = stream.get(timeout=WAIT), stream.get(timeout=WAIT)
    assert first is not None
    assert second is not None
    assert [(first.item_id, first.kind), (second.item_id, second.kind)] == [
        ("w1", ChangeKind.UPSERT),
        ("w1", ChangeKind.DELETE),
    ]
    reader.close()
    writer.close()


def test_watch_sees_commits_of_another_process(tmp_path: Path) -> None:
    """A save committed by another process arrives on the stream."""
    path = tmp_path / "proc.db"
    store = note_store(path)
    stream = store.watch(poll_interval=0.01)
    child = textwrap.dedent(
        f"""
        from pydantic import BaseModel
        from nexus_store import NexusStore

        class Note(BaseModel):
            id: str
            text: str = ""

        with NexusStore[Note, str]({str(path)!r}, model=Note) as store:
            store.save(Note(id="from-child", text="hi"))
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    change = stream.get(timeout=WAIT)
    assert change is not None
    assert change.item_id == "from-child"
    assert store.get("from-child") == Note(id="from-child", text="hi")
    store.close()


def test_iteration_ends_when_the_stream_is_closed() -> None:
    """A for-loop over a stream in another thread ends after close()."""
    store = note_store()
    stream = store.watch()
    store.save_many([Note(id=str(i)) for i in range(3)])
    seen: list[LocalChange] = []
    got_three = threading.Event()

    def consume() -> None:
        for change in stream:
            seen.append(change)
            if len(seen) == 3:
                got_three.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert got_three.wait(WAIT)
    stream.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [c.item_id for c in seen] == ["0", "1", "2"]
    assert stream.closed
    assert stream.get() is None


def test_closing_the_store_closes_its_streams() -> None:
    """store.close() ends every stream it handed out; a context manager closes one."""
    store = note_store()
    with store.watch() as scoped:
        pass
    assert scoped.closed
    stream = store.watch()
    store.close()
    assert stream.closed
    assert list(stream) == []


@pytest.mark.anyio
async def test_async_iteration_receives_changes_and_ends_on_close() -> None:
    """async for yields committed changes and stops when the store closes."""
    store = note_store()
    stream = store.watch(poll_interval=0.01)
    received: list[str | int] = []
    done = anyio.Event()

    async def consume() -> None:
        async for change in stream:
            received.append(change.item_id)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        store.save(Note(id="x"))
        store.save(Note(id="y"))
        with anyio.fail_after(WAIT):
            while len(received) < 2:
                await anyio.lowlevel.checkpoint()
        store.close()
        with anyio.fail_after(WAIT):
            await done.wait()
    assert received == ["x", "y"]


@pytest.mark.anyio
async def test_a_cancelled_async_wait_loses_no_change() -> None:
    """Cancelling a pending __anext__ does not swallow the next change."""
    store = note_store()
    async with store.watch(poll_interval=0.01) as stream:
        with anyio.move_on_after(0.05):
            await stream.__anext__()
        store.save(Note(id="after-cancel"))
        with anyio.fail_after(WAIT):
            change = await stream.__anext__()
        assert change.item_id == "after-cancel"
    assert stream.closed


def test_the_change_log_is_bounded_and_skips_are_counted() -> None:
    """The log keeps its newest rows; a reader that fell behind counts what it missed."""
    db = Database(":memory:")
    with db.transaction() as conn:
        ChangeLog.ensure_schema(conn)
    log = ChangeLog(keep=100)
    stream = ChangeStream(db, "c", since=0, batch=50)
    with db.transaction() as conn:
        for i in range(2500):
            log.append(conn, "c", i, ChangeKind.UPSERT, origin=ChangeOrigin.LOCAL, hlc=None, at=0)
    rows = db.execute("SELECT count(*), min(seq), max(seq) FROM nx_changes")[0]
    assert rows[0] <= 100 + 1000
    assert rows[2] == 2500
    items = [c.item_id for c in iter(lambda: stream.get(timeout=0), None)]
    assert items[-1] == 2499
    assert items == list(range(rows[1] - 1, 2500))
    assert stream.skipped == rows[1] - 1
    assert CHANGE_LOG_KEEP >= 1000


def test_poll_interval_must_be_positive() -> None:
    """A zero or negative poll interval is refused."""
    with pytest.raises(ValueError, match="poll_interval"):
        note_store().watch(poll_interval=0)
