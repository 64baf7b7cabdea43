"""The local store: typed records in SQLite, every write queued in the same transaction."""

from __future__ import annotations

import datetime
import enum
import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from nexus_store import NexusStore, SchemaError, SyncPriority
from nexus_store._codec import decode
from nexus_store._database import Database
from nexus_store._tablespec import (
    ColumnKind,
    column_kind,
    order_by_sql,
    plan_migration,
    remote_change_action,
    snake_case,
)
from nexus_store.backends import Change
from nexus_store.queue import OpKind, OpState
from nexus_store.testing import FakeClock


class Note(BaseModel):
    """A plain record."""

    id: str
    text: str
    rank: int = 0
    done: bool = False
    tags: list[str] = Field(default_factory=list)


class Color(enum.Enum):
    """An enum of strings."""

    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    """An enum of integers."""

    LOW = 1
    HIGH = 2


class Point(BaseModel):
    """A nested model."""

    x: float
    y: float


class Everything(BaseModel):
    """One field of every storage kind."""

    id: int
    name: str
    score: float
    flag: bool
    when: datetime.datetime
    day: datetime.date | None = None
    key: uuid.UUID
    color: Color
    level: Level
    mode: Literal["a", "b"]
    mixed: int | str
    point: Point
    extra: dict[str, Any]
    maybe: int | None = None


class FieldReport(BaseModel):
    """A CamelCase model name."""

    id: str
    body: str = ""


def note_store(path: str | Path | Database = ":memory:", **kwargs: Any) -> NexusStore[Note, str]:
    """A Note store with a fake clock."""
    kwargs.setdefault("clock", FakeClock())
    return NexusStore[Note, str](path, model=Note, **kwargs)


def test_save_then_get_round_trips_every_kind_of_field() -> None:
    """Each field type comes back equal, with its Python type."""
    store = NexusStore[Everything, int](":memory:", model=Everything)
    item = Everything(
        id=7,
        name="seven",
        score=1.5,
        flag=True,
        when=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        day=datetime.date(2024, 5, 2),
        key=uuid.UUID(int=7),
        color=Color.BLUE,
        level=Level.HIGH,
        mode="b",
        mixed="5",
        point=Point(x=1.0, y=-2.5),
        extra={"nested": [1, 2, {"a": None}]},
    )
    saved = store.save(item)
    assert saved == item
    got = store.get(7)
    assert got == item
    assert got is not None
    assert got.mixed == "5"  # a string that looks like a number stays a string
    assert isinstance(got.flag, bool)
    other = store.save(item.model_copy(update={"id": 8, "mixed": 5, "flag": False}))
    got8 = store.get(8)
    assert got8 == other
    assert got8 is not None
    assert got8.mixed == 5
    assert got8.flag is False


def test_scalar_fields_are_plain_columns_and_nested_values_json() -> None:
    """Scalars are queryable columns; lists and dicts are JSON text."""
    store = note_store()
    store.save(Note(id="a", text="hello", rank=3, done=True, tags=["x", "y"]))
    row = store.database.execute('SELECT text, rank, done, tags, _nx_deleted FROM "note"')[0]
    assert row == ("hello", 3, 1, '["x","y"]', 0)
    assert store.count("json_extract(tags, '$[0]') = ?", ["x"]) == 1


def test_get_of_a_missing_id_is_none() -> None:
    """A missing id returns None."""
    assert note_store().get("nope") is None


def test_save_queues_one_op_with_the_encoded_item_in_the_same_file() -> None:
    """A save writes the row and a queue op whose payload is the item's JSON dump."""
    store = note_store()
    store.save(Note(id="a", text="hi", tags=["t"]), priority=SyncPriority.HIGH, tag="ui")
    [op] = store.pending()
    assert op.collection == "note"
    assert op.item_id == "a"
    assert op.kind is OpKind.UPSERT
    assert op.priority is SyncPriority.HIGH
    assert op.tag == "ui"
    assert op.base_version == 0
    assert op.payload is not None
    assert decode(op.payload) == {"id": "a", "text": "hi", "rank": 0, "done": False, "tags": ["t"]}
    assert op.hlc == store.database.execute('SELECT _nx_hlc FROM "note"')[0][0]
    assert store.is_pending("a")
    assert not store.is_pending("b")


def test_a_second_save_coalesces_into_the_pending_op() -> None:
    """Saving an item twice leaves one op with the latest data and the more urgent priority."""
    store = note_store()
    store.save(Note(id="a", text="v1"), priority=SyncPriority.LOW)
    store.save(Note(id="a", text="v2"), priority=SyncPriority.CRITICAL)
    [op] = store.pending("a")
    assert op.payload is not None
    assert decode(op.payload)["text"] == "v2"
    assert op.priority is SyncPriority.CRITICAL
    assert store.get("a") == Note(id="a", text="v2")


def test_without_coalescing_every_write_is_kept() -> None:
    """coalesce=False keeps one op per write, in order."""
    store = note_store(coalesce=False)
    store.save(Note(id="a", text="v1"))
    store.save(Note(id="a", text="v2"))
    ops = store.pending("a")
    assert [decode(op.payload or b"")["text"] for op in ops] == ["v1", "v2"]


def test_priority_accepts_names_and_values() -> None:
    """A priority may be given as a member, its name or its value."""
    store = note_store()
    store.save(Note(id="a", text=""), priority="critical")
    store.save(Note(id="b", text=""), priority=3)
    assert [op.priority for op in store.pending()] == [SyncPriority.CRITICAL, SyncPriority.LOW]
    with pytest.raises(ValueError, match="priority"):
        store.save(Note(id="c", text=""), priority="urgent")


def test_save_many_writes_everything_in_one_transaction() -> None:
    """save_many stores and queues every item and returns them in order."""
    store = note_store()
    items = [Note(id=f"n{i}", text=str(i)) for i in range(5)]
    assert store.save_many(items, priority=SyncPriority.HIGH) == items
    assert store.count() == 5
    assert [op.item_id for op in store.pending()] == [f"n{i}" for i in range(5)]
    assert store.save_many([]) == []


def test_get_many_returns_found_items_by_id_in_the_order_asked() -> None:
    """get_many maps each found id to its item and leaves out missing or deleted ids."""
    store = note_store()
    store.save_many([Note(id=i, text=i) for i in ("a", "b", "c")])
    store.delete("c")
    found = store.get_many(["c", "b", "zz", "a", "b"])
    assert list(found) == ["b", "a"]
    assert found["a"] == Note(id="a", text="a")
    many = [f"k{i}" for i in range(1200)]
    store.save_many([Note(id=k, text="") for k in many])
    assert len(store.get_many(many)) == 1200


def test_all_and_query_filter_order_and_page() -> None:
    """query takes an SQL condition with parameters, field ordering, limit and offset."""
    store = note_store()
    store.save_many([Note(id=f"n{i}", text=f"t{i % 3}", rank=i % 4) for i in range(10)])
    assert [n.id for n in store.all()] == sorted(f"n{i}" for i in range(10))
    assert {n.id for n in store.query("rank = ?", [2])} == {"n2", "n6"}
    assert {n.id for n in store.query("rank = :r and text = :t", {"r": 1, "t": "t0"})} == {"n9"}
    top = store.query(order_by="rank desc, id", limit=3)
    assert [n.id for n in top] == ["n3", "n7", "n2"]
    assert [n.id for n in store.query(order_by=["rank", "id desc"], limit=2, offset=1)] == [
        "n4",
        "n0",
    ]
    assert [n.id for n in store.query(offset=8)] == ["n8", "n9"]
    assert store.count() == 10
    assert store.count("rank >= ?", [2]) == 4


@pytest.mark.parametrize(
    "order_by", ["nope", "rank; DROP TABLE note", "rank sideways", "", "rank desc,", ["id", "x"]]
)
def test_order_by_accepts_only_field_names(order_by: str | list[str]) -> None:
    """An order_by that is not a field name (with asc/desc) is refused before any SQL runs."""
    store = note_store()
    with pytest.raises(ValueError, match="order_by"):
        store.query(order_by=order_by)


@pytest.mark.parametrize(("limit", "offset"), [(-1, None), (None, -2), (True, None)])
def test_query_refuses_negative_or_odd_paging(limit: Any, offset: Any) -> None:
    """limit and offset must be non-negative integers."""
    with pytest.raises(ValueError, match="non-negative"):
        note_store().query(limit=limit, offset=offset)


def test_delete_keeps_a_tombstone_and_queues_a_delete() -> None:
    """A delete hides the item, keeps the row flagged and queues a DELETE op."""
    store = note_store()
    store.save(Note(id="a", text="x"))
    store.apply_ack("a", 5)
    store.queue.ack([op.op_id for op in store.pending()])
    assert store.delete("a", priority=SyncPriority.HIGH)
    assert store.get("a") is None
    assert store.count() == 0
    assert store.all() == []
    assert store.database.execute('SELECT _nx_deleted, _nx_version FROM "note"') == [(1, 5)]
    [op] = store.pending("a")
    assert (op.kind, op.payload, op.base_version, op.priority) == (
        OpKind.DELETE,
        None,
        5,
        SyncPriority.HIGH,
    )


def test_delete_of_a_missing_or_deleted_item_does_nothing() -> None:
    """Deleting an unknown or already deleted id returns False and queues nothing."""
    store = note_store()
    assert not store.delete("ghost")
    store.save(Note(id="a", text="x"))
    assert store.delete("a")
    assert not store.delete("a")
    assert len(store.pending()) == 1
    assert store.pending()[0].kind is OpKind.DELETE


def test_save_after_delete_brings_the_item_back() -> None:
    """A save over a tombstone makes the item live again."""
    store = note_store()
    store.save(Note(id="a", text="old"))
    store.delete("a")
    store.save(Note(id="a", text="new"))
    assert store.get("a") == Note(id="a", text="new")
    assert store.pending("a")[0].kind is OpKind.UPSERT


def test_collection_defaults_to_snake_case_model_name() -> None:
    """The table is named after the model in snake_case unless a collection is given."""
    report = NexusStore[FieldReport, str](":memory:", model=FieldReport)
    assert report.collection == "field_report"
    custom = NexusStore[FieldReport, str](":memory:", model=FieldReport, collection="reports")
    custom.save(FieldReport(id="r"))
    assert custom.database.execute('SELECT id FROM "reports"') == [("r",)]


def test_several_models_share_one_file(tmp_path: Path) -> None:
    """Stores of different models on one file keep separate tables and one queue."""
    path = tmp_path / "shared.db"
    notes = note_store(path)
    reports = NexusStore[FieldReport, str](path, model=FieldReport)
    notes.save(Note(id="x", text="note"))
    reports.save(FieldReport(id="x", body="report"))
    assert notes.get("x") == Note(id="x", text="note")
    assert reports.get("x") == FieldReport(id="x", body="report")
    assert [op.collection for op in notes.queue.pending()] == ["note", "field_report"]
    assert [op.collection for op in notes.pending()] == ["note"]
    notes.close()
    reports.close()


def test_stores_can_share_one_database_object_even_in_memory() -> None:
    """Stores given one Database share its connection (even :memory:) and do not close it."""
    db = Database(":memory:")
    notes = note_store(db)
    reports = NexusStore[FieldReport, str](db, model=FieldReport)
    with notes.database.transaction():
        notes.save(Note(id="a", text=""))
        reports.save(FieldReport(id="b"))
    assert len(notes.queue.pending()) == 2
    notes.close()
    assert not db.closed
    assert reports.get("b") == FieldReport(id="b")
    reports.close()
    db.close()


def test_outer_transaction_makes_writes_of_several_stores_atomic() -> None:
    """A failure inside database.transaction() rolls back every store's writes."""
    db = Database(":memory:")
    notes = note_store(db)
    reports = NexusStore[FieldReport, str](db, model=FieldReport)
    with pytest.raises(RuntimeError), db.transaction():
        notes.save(Note(id="a", text=""))
        reports.save(FieldReport(id="b"))
        raise RuntimeError("abort")
    assert notes.count() == 0
    assert reports.count() == 0
    assert notes.queue.pending() == []


def test_saves_survive_close_and_reopen(tmp_path: Path) -> None:
    """Items, tombstones and queued ops are all there after reopening the file."""
    path = tmp_path / "durable.db"
    with note_store(path) as store:
        store.save_many([Note(id=f"n{i}", text=str(i)) for i in range(20)])
        store.delete("n3")
        ops_before = store.pending()
    with note_store(path) as again:
        assert again.count() == 19
        assert again.get("n3") is None
        assert again.get("n7") == Note(id="n7", text="7")
        assert again.pending() == ops_before
        assert again.database.integrity_check() == ["ok"]


def test_durability_sets_synchronous_mode(tmp_path: Path) -> None:
    """durability='full' is synchronous=FULL (2); 'normal' is NORMAL (1), both in WAL."""
    full = note_store(tmp_path / "f.db")
    normal = note_store(tmp_path / "n.db", durability="normal")
    assert full.database.execute("PRAGMA synchronous") == [(2,)]
    assert normal.database.execute("PRAGMA synchronous") == [(1,)]
    assert normal.database.execute("PRAGMA journal_mode") == [("wal",)]
    full.close()
    normal.close()


def test_several_threads_save_at_once(tmp_path: Path) -> None:
    """Concurrent saves from threads all land, each with its op, and the file stays sound."""
    store = note_store(tmp_path / "threads.db", durability="normal")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(t: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(100):
                if i % 10 == 0:
                    store.save_many([Note(id=f"t{t}-{i}-{j}", text="") for j in range(3)])
                else:
                    store.save(Note(id=f"t{t}-{i}", text=str(i)))
                store.get(f"t{t}-{i // 2}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    expected = 4 * (90 + 10 * 3)
    assert store.count() == expected
    assert len(store.pending()) == expected
    assert store.database.integrity_check() == ["ok"]
    store.close()


def test_integer_and_uuid_ids() -> None:
    """Integer ids stay integers; UUID ids are stored as text and come back as UUIDs."""

    class Counter(BaseModel):
        id: int
        n: int = 0

    class Thing(BaseModel):
        id: uuid.UUID
        name: str = ""

    counters = NexusStore[Counter, int](":memory:", model=Counter)
    counters.save(Counter(id=1, n=5))
    assert counters.get(1) == Counter(id=1, n=5)
    assert counters.pending()[0].item_id == 1
    things = NexusStore[Thing, uuid.UUID](":memory:", model=Thing)
    key = uuid.uuid4()
    things.save(Thing(id=key, name="x"))
    assert things.get(key) == Thing(id=key, name="x")
    assert things.get(str(key)) == Thing(id=key, name="x")  # type: ignore[arg-type]
    assert things.pending()[0].item_id == str(key)
    assert list(things.get_many([key])) == [key]
    assert things.apply_ack(key, 3)
    assert things.apply_ack(str(key), 4)
    assert things.stored_version(key) == 4


def test_custom_id_field() -> None:
    """id_field names the primary key."""

    class Person(BaseModel):
        email: str
        name: str

    people = NexusStore[Person, str](":memory:", model=Person, id_field="email")
    people.save(Person(email="a@b.c", name="A"))
    assert people.get("a@b.c") == Person(email="a@b.c", name="A")


def test_strict_and_aliased_models_round_trip() -> None:
    """Models with strict validation or field aliases are stored and read back."""

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True)
        id: str
        at: datetime.datetime
        ok: bool

    class Aliased(BaseModel):
        id: str = Field(alias="ID")
        full_name: str = Field(alias="fullName")

    strict = NexusStore[Strict, str](":memory:", model=Strict)
    item = Strict(id="s", at=datetime.datetime(2020, 1, 1), ok=True)
    strict.save(item)
    assert strict.get("s") == item
    aliased = NexusStore[Aliased, str](":memory:", model=Aliased)
    a = Aliased(ID="x", fullName="Ann")
    aliased.save(a)
    assert aliased.get("x") == a


def test_new_model_fields_add_columns_with_their_defaults(tmp_path: Path) -> None:
    """Reopening with an extra field adds its column and fills old rows with the default."""
    path = tmp_path / "evolve.db"

    class V1(BaseModel):
        id: str
        text: str

    class V2(BaseModel):
        id: str
        text: str
        rank: int = 7
        tags: list[str] = Field(default_factory=lambda: ["new"])
        note: str | None = None

    with NexusStore[V1, str](path, model=V1, collection="doc") as v1:
        v1.save(V1(id="a", text="old"))
    with NexusStore[V2, str](path, model=V2, collection="doc", schema_version=2) as v2:
        assert v2.get("a") == V2(id="a", text="old", rank=7, tags=["new"])
        v2.save(V2(id="b", text="x", rank=1, note="n"))
        assert v2.count("rank = ?", [7]) == 1
        assert v2.pending("b")[0].schema_version == 2


def test_a_new_required_field_without_default_is_refused_when_rows_exist(tmp_path: Path) -> None:
    """A required field added to a table with items cannot be filled: SchemaError."""
    path = tmp_path / "evolve.db"

    class V1(BaseModel):
        id: str

    class V2(BaseModel):
        id: str
        must: str

    with NexusStore[V1, str](path, model=V1, collection="doc") as v1:
        v1.save(V1(id="a"))
    with pytest.raises(SchemaError, match="must"):
        NexusStore[V2, str](path, model=V2, collection="doc")


def test_a_changed_scalar_type_retypes_its_column(tmp_path: Path) -> None:
    """A field that changes from int to str gets a TEXT column on reopen."""
    path = tmp_path / "retype.db"

    class V1(BaseModel):
        id: str
        code: int

    class V2(BaseModel):
        id: str
        code: str

    with NexusStore[V1, str](path, model=V1, collection="doc") as v1:
        v1.save(V1(id="a", code=12))
    with NexusStore[V2, str](path, model=V2, collection="doc") as v2:
        assert v2.get("a") == V2(id="a", code="12")
        v2.save(V2(id="b", code="0012"))
        assert v2.get("b") == V2(id="b", code="0012")
        types = {row[1]: row[2] for row in v2.database.execute('PRAGMA table_info("doc")')}
        assert types["code"] == "TEXT"


def test_an_existing_table_with_another_primary_key_is_refused(tmp_path: Path) -> None:
    """Opening a store over a table keyed differently raises SchemaError."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE note (key TEXT PRIMARY KEY, id TEXT, text TEXT)")
    conn.close()
    with pytest.raises(SchemaError, match="primary key"):
        note_store(path)


def test_apply_ack_records_the_server_version() -> None:
    """apply_ack raises the stored version; the next op is based on it."""
    store = note_store()
    store.save(Note(id="a", text="v1"))
    assert store.apply_ack("a", 3)
    assert not store.apply_ack("a", 2)  # never goes back
    assert not store.apply_ack("missing", 9)
    assert store.stored_version("a") == 3
    store.queue.ack([op.op_id for op in store.pending()])
    store.save(Note(id="a", text="v2"))
    assert store.pending("a")[0].base_version == 3


def test_apply_acks_records_many_versions_at_once() -> None:
    """apply_acks is apply_ack for many items: only forward moves count, unknown ids do not."""
    store = note_store()
    store.save_many([Note(id="a", text="1"), Note(id="b", text="2")])
    assert store.apply_acks([("a", 4), ("b", 5), ("missing", 9)]) == 2
    assert store.apply_acks([("a", 3), ("b", 6)]) == 1  # a never goes back
    assert store.apply_acks([]) == 0
    assert (store.stored_version("a"), store.stored_version("b")) == (4, 6)


def test_apply_remote_changes_upserts_and_tombstones() -> None:
    """Pulled changes update or delete items and record their versions."""
    store = note_store()
    applied = store.apply_remote_changes(
        [
            Change(collection="note", item_id="r1", version=4, data={"id": "r1", "text": "srv"}),
            Change(collection="note", item_id="r2", version=5, deleted=True),
            Change(collection="other", item_id="r1", version=6, data={"id": "r1"}),
        ]
    )
    assert [c.item_id for c in applied] == ["r1", "r2"]
    assert store.get("r1") == Note(id="r1", text="srv")
    assert store.get("r2") is None
    assert store.stored_version("r1") == 4
    assert store.stored_version("r2") == 5
    assert store.pending() == []  # remote changes are not queued back


def test_apply_remote_changes_never_overwrites_a_pending_item() -> None:
    """An item with a queued op keeps its local state; stale changes are ignored."""
    store = note_store()
    store.save(Note(id="a", text="local"))
    change = Change(collection="note", item_id="a", version=9, data={"id": "a", "text": "srv"})
    assert store.apply_remote_changes([change]) == []
    assert store.get("a") == Note(id="a", text="local")
    assert store.apply_remote_changes([change], overwrite_pending=True) == [change]
    assert store.get("a") == Note(id="a", text="srv")
    stale = Change(collection="note", item_id="a", version=8, data={"id": "a", "text": "old"})
    store.queue.ack([op.op_id for op in store.pending()])
    assert store.apply_remote_changes([stale]) == []
    assert store.get("a") == Note(id="a", text="srv")


def test_apply_remote_changes_quarantines_data_that_does_not_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A remote item that fails validation is kept in the quarantine (and logged); the rest
    apply."""
    store = note_store()
    bad = Change(collection="note", item_id="b", version=2, data={"id": "b", "rank": "x"})
    good = Change(collection="note", item_id="g", version=3, data={"id": "g", "text": "ok"})
    with caplog.at_level("WARNING", logger="nexus_store"):
        assert store.apply_remote_changes([bad, good]) == [good]
    assert "quarantined remote change" in caplog.text
    assert store.get("b") is None
    assert [q.change for q in store.quarantined()] == [bad]


def test_pull_cursor_is_kept_per_collection(tmp_path: Path) -> None:
    """The pull cursor persists per collection."""
    path = tmp_path / "cursor.db"
    with note_store(path) as notes:
        assert notes.pull_cursor() == 0
        notes.set_pull_cursor(42)
        with pytest.raises(ValueError, match="cursor"):
            notes.set_pull_cursor(-1)
    with note_store(path) as notes, NexusStore[FieldReport, str](path, model=FieldReport) as rep:
        assert notes.pull_cursor() == 42
        assert rep.pull_cursor() == 0


def test_repr_names_the_file_model_and_state() -> None:
    """repr shows path, model and collection, and whether it is closed."""
    store = note_store()
    assert repr(store) == "NexusStore(':memory:', model=Note, collection='note')"
    store.close()
    assert repr(store).endswith("closed)")
    store.close()  # idempotent


# -- pure decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        (int, ColumnKind.INTEGER),
        (int | None, ColumnKind.INTEGER),
        (bool, ColumnKind.BOOLEAN),
        (float, ColumnKind.REAL),
        (str, ColumnKind.TEXT),
        (datetime.datetime, ColumnKind.TEXT),
        (datetime.date, ColumnKind.TEXT),
        (uuid.UUID, ColumnKind.TEXT),
        (Color, ColumnKind.TEXT),
        (Level, ColumnKind.INTEGER),
        (Literal["a", "b"], ColumnKind.TEXT),
        (Literal[1, 2], ColumnKind.INTEGER),
        (Literal[1, "a"], ColumnKind.JSON),
        (int | str, ColumnKind.JSON),
        (list[int], ColumnKind.JSON),
        (dict[str, int], ColumnKind.JSON),
        (Point, ColumnKind.JSON),
        (Any, ColumnKind.JSON),
    ],
)
def test_column_kind_by_annotation(annotation: Any, kind: ColumnKind) -> None:
    """Each annotation maps to the column kind that round-trips it."""
    assert column_kind(annotation) is kind


@pytest.mark.parametrize(
    ("name", "snake"),
    [("Note", "note"), ("FieldReport", "field_report"), ("HTTPLog", "http_log"), ("A2B", "a2_b")],
)
def test_snake_case(name: str, snake: str) -> None:
    """Model names become snake_case table names."""
    assert snake_case(name) == snake


def test_order_by_sql_quotes_fields_and_directions() -> None:
    """Order terms become quoted identifiers with an explicit direction."""
    assert order_by_sql("b desc, a", {"a", "b"}) == '"b" DESC, "a" ASC'
    assert order_by_sql(["a ASC"], {"a"}) == '"a" ASC'


@given(st.text(max_size=30))
def test_order_by_sql_never_lets_other_text_through(text: str) -> None:
    """Whatever the input, the result holds only known fields and ASC/DESC, or it raises."""
    fields = {"a", "rank"}
    try:
        sql = order_by_sql(text, fields)
    except ValueError:
        return
    for term in sql.split(", "):
        name, direction = term.rsplit(" ", 1)
        assert name.strip('"') in fields
        assert direction in ("ASC", "DESC")


def test_plan_migration_adds_and_retypes_but_never_drops() -> None:
    """New columns are added, changed types retyped, and dropped fields kept."""
    plan = plan_migration(
        {"id": "TEXT", "a": "INTEGER", "b": "FLOAT", "gone": "TEXT"},
        {"id": "TEXT", "a": "TEXT", "b": "REAL", "c": "INTEGER"},
    )
    assert plan.add == {"c": "INTEGER"}
    assert plan.retype == {"a": "TEXT"}
    assert not plan_migration({"id": "TEXT"}, {"id": "text"})


@given(
    version=st.integers(1, 100),
    stored=st.none() | st.integers(0, 100),
    pending=st.booleans(),
)
def test_remote_change_action_rules(version: int, stored: int | None, pending: bool) -> None:
    """Pending items are never overwritten; only strictly newer versions apply."""
    action = remote_change_action(version, stored, has_pending_op=pending)
    if pending:
        assert action == "skip_pending"
    elif stored is not None and stored >= version:
        assert action == "skip_stale"
    else:
        assert action == "apply"


def test_pending_can_filter_states_and_limit() -> None:
    """pending() passes states and limit through to the queue."""
    store = note_store()
    store.save_many([Note(id=f"n{i}", text="") for i in range(3)])
    leased = store.queue.lease(1, 30.0)
    assert [op.state for op in store.pending(states=[OpState.LEASED])] == [OpState.LEASED]
    assert [op.op_id for op in store.pending(states=[OpState.LEASED])] == [
        op.op_id for op in leased
    ]
    assert len(store.pending(limit=2)) == 2


def test_column_kinds_are_recorded_for_tools_without_the_model() -> None:
    """nx_meta holds each field's column kind under columns:<collection>."""
    store = note_store()
    [(value,)] = store.database.execute("SELECT value FROM nx_meta WHERE key = 'columns:note'")
    assert json.loads(value) == {
        "id": "text",
        "text": "text",
        "rank": "integer",
        "done": "boolean",
        "tags": "json",
    }


def test_excluded_fields_are_not_stored_and_aliases_never_name_columns() -> None:
    """A field excluded from serialization is not kept; alias serialization changes nothing."""

    class Secretive(BaseModel):
        model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)
        id: str
        display: str = Field(alias="displayName")
        token: str = Field(default="none", exclude=True)

    store = NexusStore[Secretive, str](":memory:", model=Secretive)
    store.save(Secretive(id="s", displayName="Ann", token="hunter2"))
    assert store.get("s") == Secretive(id="s", displayName="Ann")
    columns = [row[1] for row in store.database.execute('PRAGMA table_info("secretive")')]
    assert "token" not in columns
    assert "display" in columns
    [op] = store.pending()
    assert decode(op.payload or b"") == {"id": "s", "display": "Ann"}
