"""Pulled changes that cannot be applied locally are kept, reported and tried again."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import NexusStore
from nexus_store._database import Database
from nexus_store.backends import Change, MemoryBackend
from nexus_store.cli import app
from nexus_store.sync.engine import RawCollection, SyncRunner
from nexus_store.testing import FakeClock


class Loose(BaseModel):
    """Client A's model: no 'owner' field."""

    id: str
    text: str


class Strict(BaseModel):
    """Client B's model: 'owner' is required."""

    id: str
    text: str
    owner: str


class Fixed(BaseModel):
    """Client B's model, fixed: 'owner' has a default."""

    id: str
    text: str
    owner: str = "nobody"


def _push_from_a(server: MemoryBackend, *texts: str) -> None:
    a = NexusStore[Loose, str](
        ":memory:", model=Loose, collection="note", backend=server, owns_backend=False
    )
    for n, text in enumerate(texts):
        a.save(Loose(id=f"n{n}", text=text))
    assert a.sync().ok
    a.close()


def test_a_change_that_does_not_fit_is_quarantined_not_dropped(tmp_path: Path) -> None:
    """B's sync reports it (ok False, quarantined 1); fixing B's model brings the item back."""
    server = MemoryBackend()
    _push_from_a(server, "from a")
    path = tmp_path / "b.db"
    b = NexusStore[Strict, str](
        path, model=Strict, collection="note", backend=server, owns_backend=False
    )
    summary = b.sync()
    assert summary.quarantined == 1
    assert summary.pulled == 0
    assert not summary.ok
    assert "1 quarantined" in summary.message()
    assert b.get("n0") is None
    kept = b.quarantined()
    assert [q.change.item_id for q in kept] == ["n0"]
    assert "owner" in kept[0].reason
    assert b.queue.stats().quarantined == 1
    assert b.pull_cursor() > 0  # the cursor moved on: the change is kept
    again = b.sync()  # nothing new, nothing quarantined in this run
    assert again.ok
    assert again.quarantined == 0
    b.close()
    fixed = NexusStore[Fixed, str](
        path, model=Fixed, collection="note", backend=server, owns_backend=False
    )
    assert fixed.get("n0") == Fixed(id="n0", text="from a", owner="nobody")
    assert fixed.quarantined() == []
    assert fixed.queue.stats().quarantined == 0
    fixed.close()


def test_a_newer_change_that_fits_replaces_the_quarantined_one() -> None:
    """A later valid change of the item applies and drops the kept one."""
    b = NexusStore[Strict, str](":memory:", model=Strict, collection="note")
    bad = Change(collection="note", item_id="x", version=1, data={"id": "x", "text": "t"})
    good = Change(
        collection="note", item_id="x", version=2, data={"id": "x", "text": "t", "owner": "o"}
    )
    assert b.apply_pulled([bad]).quarantined == 1
    assert b.apply_pulled([good]).applied == [good]
    assert b.quarantined() == []
    assert b.get("x") == Strict(id="x", text="t", owner="o")
    b.close()


def test_a_bad_change_of_an_item_with_a_pending_op_is_left_to_the_push() -> None:
    """Pulled changes never overwrite a pending item: a bad one is not kept either."""
    b = NexusStore[Strict, str](":memory:", model=Strict, collection="note", clock=FakeClock())
    b.save(Strict(id="x", text="mine", owner="me"))
    bad = Change(collection="note", item_id="x", version=5, data={"id": "x"})
    assert b.apply_pulled([bad]) == ([], 0)
    assert b.quarantined() == []
    b.close()


def test_retry_and_discard() -> None:
    """retry_quarantined(force=True) tries all again; discard_quarantined drops them."""
    b = NexusStore[Strict, str](":memory:", model=Strict, collection="note")
    changes = [
        Change(collection="note", item_id=f"x{i}", version=i + 1, data={"id": f"x{i}"})
        for i in range(3)
    ]
    assert b.apply_pulled(changes).quarantined == 3
    assert b.retry_quarantined() == 0  # same model: not due
    assert b.retry_quarantined(force=True) == 0
    kept = b.quarantined()
    assert [q.attempts for q in kept] == [2, 2, 2]
    assert b.discard_quarantined([kept[0].id]) == 1
    assert b.discard_quarantined() == 2
    assert b.quarantined() == []
    b.close()


def test_a_worker_without_the_model_quarantines_by_the_recorded_layout(tmp_path: Path) -> None:
    """RawCollection (the worker, the sync command) keeps a change missing a field or with a
    value of the wrong kind; the app's store applies those its model makes fit when it opens."""
    path = tmp_path / "app.db"
    NexusStore[Strict, str](path, model=Strict, collection="note").close()
    database = Database(path)
    raw = RawCollection(database, "note")
    changes = [
        Change(collection="note", item_id="a", version=1, data={"id": "a", "text": "t"}),
        Change(
            collection="note", item_id="b", version=2, data={"id": "b", "text": 5, "owner": "o"}
        ),
        Change(
            collection="note", item_id="c", version=3, data={"id": "c", "text": "t", "owner": "o"}
        ),
        Change(
            collection="note", item_id="d", version=4, data={"id": "d", "text": "t", "owner": 2**70}
        ),
        # Sent by an older model: the store's defaults (and migrations) make it fit.
        Change(collection="note", item_id="e", version=5, data={"id": "e", "text": "t"}),
    ]
    result = raw.apply_pulled(changes)
    assert [c.item_id for c in result.applied] == ["c"]
    assert result.quarantined == 4
    database.close()
    fixed = NexusStore[Fixed, str](path, model=Fixed, collection="note")
    assert fixed.get("a") == Fixed(id="a", text="t")
    assert fixed.get("e") == Fixed(id="e", text="t")
    assert sorted(q.change.item_id for q in fixed.quarantined()) == ["b", "d"]
    fixed.close()


@pytest.mark.anyio
async def test_the_runner_reports_quarantined_changes(tmp_path: Path) -> None:
    """A sync run over RawCollection targets counts quarantined changes in its summary."""
    server = MemoryBackend()
    _push_from_a(server, "one", "two")
    path = tmp_path / "w.db"
    NexusStore[Strict, str](path, model=Strict, collection="note").close()
    database = await anyio.to_thread.run_sync(Database, path)
    target = RawCollection(database, "note")
    summary = await SyncRunner(target, server).run()
    assert (summary.quarantined, summary.pulled, summary.ok) == (2, 0, False)
    database.close()


def test_queue_command_lists_quarantined_changes(tmp_path: Path) -> None:
    """nexus-store queue shows the count and each kept change with its reason."""
    path = tmp_path / "q.db"
    b = NexusStore[Strict, str](path, model=Strict, collection="note")
    b.apply_pulled([Change(collection="note", item_id="x", version=1, data={"id": "x"})])
    b.close()
    result = CliRunner().invoke(app, ["queue", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "quarantined changes (1)" in result.output
    as_json = json.loads(CliRunner().invoke(app, ["queue", "--db", str(path), "--json"]).output)
    assert as_json["quarantined"][0]["item_id"] == "x"
    assert "owner" in as_json["quarantined"][0]["reason"]
