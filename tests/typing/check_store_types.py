"""What a user's type checker sees of NexusStore (read by mypy only, never run)."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from nexus_store import ChangeStream, LocalChange, NexusStore, SyncPriority
from nexus_store.queue import QueuedOp


class Note(BaseModel):
    id: str
    text: str


class Counter(BaseModel):
    id: int


def check_store() -> None:
    store = NexusStore[Note, str]("app.db", model=Note)
    assert_type(store.save(Note(id="a", text="")), Note)
    assert_type(store.save(Note(id="a", text=""), priority=SyncPriority.HIGH, tag="t"), Note)
    assert_type(store.save_many([Note(id="a", text="")]), list[Note])
    assert_type(store.get("a"), Note | None)
    assert_type(store.get_many(["a", "b"]), dict[str, Note])
    assert_type(store.all(), list[Note])
    assert_type(store.query("text = ?", ["x"], order_by="id desc", limit=3), list[Note])
    assert_type(store.count(), int)
    assert_type(store.delete("a"), bool)
    assert_type(store.pending(), list[QueuedOp])
    assert_type(store.is_pending("a"), bool)
    assert_type(store.model, type[Note])

    store.get(1)  # type: ignore[arg-type]
    store.delete(1)  # type: ignore[arg-type]
    store.save(Counter(id=1))  # type: ignore[arg-type]

    counters = NexusStore[Counter, int](":memory:", model=Counter)
    assert_type(counters.get(1), Counter | None)
    assert_type(counters.get_many([1]), dict[int, Counter])
    counters.get("1")  # type: ignore[arg-type]


def check_unsubscripted() -> None:
    store = NexusStore("app.db", model=Note)
    assert_type(store.get("a"), Note | None)
    assert_type(store.all(), list[Note])


def check_watch() -> None:
    store = NexusStore[Note, str]("app.db", model=Note)
    stream = store.watch()
    assert_type(stream, ChangeStream)
    for change in stream:
        assert_type(change, LocalChange)
        assert_type(change.item_id, str | int)
    assert_type(stream.get(timeout=1.0), LocalChange | None)


async def check_async_watch() -> None:
    store = NexusStore[Note, str]("app.db", model=Note)
    async with store.watch() as stream:
        async for change in stream:
            assert_type(change, LocalChange)


def check_context_manager() -> None:
    with NexusStore[Note, str]("app.db", model=Note) as store:
        assert_type(store, NexusStore[Note, str])
