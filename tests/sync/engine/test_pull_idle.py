"""A pull that brings nothing new writes nothing to the file (no transaction, no disk
sync): the common periodic run of an idle app; a page that only moves the cursor (past
the run's own changes) is still stored."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import BaseModel

from nexus_store._remote import Change
from nexus_store._store import NexusStore
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync.engine import _pull
from nexus_store.sync.engine._target import SyncTarget


class Note(BaseModel):
    id: str
    text: str


@pytest.fixture
def applied_pages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each page a run applies: (its changes, the cursor stored with it)."""
    pages: list[tuple[int, int]] = []
    apply = _pull._apply_page

    def counting(target: SyncTarget, changes: Sequence[Change], cursor: int) -> tuple[int, int]:
        pages.append((len(changes), cursor))
        return apply(target, changes, cursor)

    monkeypatch.setattr(_pull, "_apply_page", counting)
    return pages


def test_a_run_with_nothing_new_to_pull_writes_no_page(
    applied_pages: list[tuple[int, int]],
) -> None:
    server = MemoryBackend()
    with NexusStore[Note, str](":memory:", model=Note, backend=server, owns_backend=False) as a:
        a.save(Note(id="n1", text="one"))
        assert a.sync().pushed == 1
    applied_pages.clear()
    with NexusStore[Note, str](":memory:", model=Note, backend=server, owns_backend=False) as b:
        assert b.sync().pulled == 1
        assert applied_pages == [(1, 1)]
        applied_pages.clear()
        cursor = b.pull_cursor()
        summary = b.sync()  # nothing new anywhere
        assert (summary.ok, summary.pulled, summary.requests) == (True, 0, 1)
        assert applied_pages == []
        assert b.pull_cursor() == cursor


def test_a_page_that_only_moves_the_cursor_is_stored(applied_pages: list[tuple[int, int]]) -> None:
    """The run's own change is left out of its pull, but the cursor moves past it."""
    server = MemoryBackend()
    with NexusStore[Note, str](":memory:", model=Note, backend=server, owns_backend=False) as a:
        a.save(Note(id="n1", text="one"))
        summary = a.sync()
        assert (summary.pushed, summary.pulled) == (1, 0)
        assert applied_pages == [(0, 1)]
        assert a.pull_cursor() == 1
