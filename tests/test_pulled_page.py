"""A pulled page is judged against its items' state read once for the page: the same
outcome, change by change, as looking each item up on its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from nexus_store import CorruptDatabaseError, NexusStore, PrioritySyncQueue
from nexus_store.backends import Change


class Note(BaseModel):
    id: str
    text: str


class Counter(BaseModel):
    id: int
    n: int


def _change(item_id: str, version: int, text: str) -> Change:
    return Change(
        collection="note", item_id=item_id, version=version, data={"id": item_id, "text": text}
    )


def test_an_item_twice_in_a_page_is_judged_against_its_first_write() -> None:
    """Newer after older: both apply, the newer last. Older after newer: the older does not."""
    with NexusStore[Note, str](":memory:", model=Note, collection="note") as store:
        up = [_change("a", 5, "five"), _change("a", 7, "seven")]
        assert store.apply_remote_changes(up) == up
        assert (store.get("a"), store.stored_version("a")) == (Note(id="a", text="seven"), 7)
        down = [_change("b", 7, "seven"), _change("b", 5, "five")]
        assert store.apply_remote_changes(down) == down[:1]
        assert (store.get("b"), store.stored_version("b")) == (Note(id="b", text="seven"), 7)


def test_a_page_skips_exactly_the_items_with_pending_ops_and_newer_versions() -> None:
    with NexusStore[Note, str](":memory:", model=Note, collection="note") as store:
        store.save(Note(id="mine", text="local"))  # a pending op: never overwritten
        store.apply_remote_changes([_change("newer", 9, "kept")])
        page = [_change(f"n{i}", 10 + i, "srv") for i in range(50)]
        page[10:10] = [_change("mine", 3, "srv"), _change("newer", 4, "old")]
        applied = store.apply_remote_changes(page)
        assert [c.item_id for c in applied] == [f"n{i}" for i in range(50)]
        assert store.get("mine") == Note(id="mine", text="local")
        assert store.get("newer") == Note(id="newer", text="kept")
        assert store.apply_remote_changes(page, overwrite_pending=True) == [page[10]]
        assert store.get("mine") == Note(id="mine", text="srv")


def test_integer_and_text_ids_stay_apart_when_a_page_is_looked_up() -> None:
    """The queue asked about many ids at once keeps 1 and "1" apart, as one by one."""
    queue = PrioritySyncQueue(":memory:")
    try:
        queue.enqueue("c", 1, b"\x80")
        queue.enqueue("c", "2", b"\x80")
        queue.enqueue("d", 3, b"\x80")
        asked: list[str | int] = [1, "1", 2, "2", 3, "3"]
        assert queue.pending_among("c", asked) == {1, "2"}
        assert queue.pending_among("c", []) == set()
        assert queue.pending_among("c", asked) == {i for i in asked if queue.is_pending("c", i)}
    finally:
        queue.close()


@settings(max_examples=40, deadline=None)
@given(
    stored=st.dictionaries(st.integers(0, 30), st.integers(1, 50), max_size=15),
    pending=st.sets(st.integers(0, 30), max_size=8),
    page=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 60)), max_size=25),
)
def test_a_page_applies_what_one_change_at_a_time_would(
    stored: dict[int, int], pending: set[int], page: list[tuple[int, int]]
) -> None:
    """The same changes applied as one page and one by one leave the same rows, versions
    and applied list, whatever the stored versions, pending ops and repeats in the page."""

    def outcome(as_page: bool) -> tuple[list[Change], list[tuple[int, int, int]]]:
        with NexusStore[Counter, int](":memory:", model=Counter, collection="c") as store:
            for item, version in stored.items():
                store.apply_remote_changes(
                    [
                        Change(
                            collection="c", item_id=item, version=version, data={"id": item, "n": 0}
                        )
                    ]
                )
            for item in pending:
                store.save(Counter(id=item, n=-1))
            changes = [
                Change(collection="c", item_id=item, version=v, data={"id": item, "n": v})
                for item, v in page
            ]
            if as_page:
                applied = store.apply_remote_changes(changes)
            else:
                applied = [c for c in changes for _ in store.apply_remote_changes([c])]
            rows = sorted((c.id, c.n, store.stored_version(c.id) or 0) for c in store.all())
            return applied, rows

    assert outcome(as_page=True) == outcome(as_page=False)


def test_a_damaged_version_in_a_page_lookup_is_reported(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with NexusStore[Note, str](path, model=Note, collection="note") as store:
        store.apply_remote_changes([_change("a", 2, "srv")])
        table = store._table.spec.table  # the file is damaged on purpose, below
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE \"{table}\" SET _nx_version = 'two'")
    conn.commit()
    conn.close()
    with (
        NexusStore[Note, str](path, model=Note, collection="note") as store,
        pytest.raises(CorruptDatabaseError, match="is not a server version"),
    ):
        store.apply_remote_changes([_change("a", 3, "newer")])
