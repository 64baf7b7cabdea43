"""Bad input gets a clear typed error and changes nothing."""

from __future__ import annotations

import datetime
import os
import random
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from pydantic import BaseModel, create_model

from nexus_store import (
    CorruptDatabaseError,
    DatabaseError,
    ItemValidationError,
    NexusStore,
    SchemaError,
    StoreClosedError,
)
from nexus_store.backends import Change
from nexus_store.testing import FakeClock

X = TypeVar("X")


class Note(BaseModel):
    """A plain record."""

    id: str
    text: str
    rank: int = 0


class Other(BaseModel):
    """Another model with a compatible shape."""

    id: str
    text: str


class Counter(BaseModel):
    """A record with an integer id."""

    id: int
    n: int = 0


class Box(BaseModel, Generic[X]):
    """A generic model: its parametrized name is not a safe table name."""

    id: str
    value: X


def note_store(path: str | Path = ":memory:") -> NexusStore[Note, str]:
    """A Note store with one item already saved."""
    store = NexusStore[Note, str](path, model=Note, clock=FakeClock())
    store.save(Note(id="base", text="kept"))
    return store


def snapshot(store: NexusStore[Any, Any]) -> tuple[list[Any], ...]:
    """Everything a write could touch: the table, the queue and the change log."""
    db = store.database
    return (
        db.execute(f'SELECT * FROM "{store.collection}" ORDER BY 1'),
        db.execute("SELECT * FROM nx_queue ORDER BY seq"),
        db.execute("SELECT * FROM nx_changes ORDER BY seq"),
    )


def _mutated_rank() -> Note:
    note = Note(id="m", text="x")
    note.rank = "high"  # type: ignore[assignment]
    return note


def _mutated_id() -> Note:
    note = Note(id="m", text="x")
    note.id = 5  # type: ignore[assignment]
    return note


BAD_ITEMS: dict[str, Callable[[], object]] = {
    "another model": lambda: Other(id="o", text="x"),
    "a dict": lambda: {"id": "d", "text": "x"},
    "None": lambda: None,
    "model_construct with a field missing": lambda: Note.model_construct(id="c"),
    "an invalid value assigned after construction": _mutated_rank,
    "an id of the wrong type": _mutated_id,
    "an integer too big for the codec": lambda: Note(id="big", text="", rank=2**70),
    "an integer too big for SQLite": lambda: Note(id="big", text="", rank=2**63),
}


@pytest.mark.parametrize("make", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_an_invalid_item_raises_and_writes_nothing(make: Callable[[], object]) -> None:
    """save() refuses the item with ItemValidationError; table, queue and log are unchanged."""
    store = note_store()
    before = snapshot(store)
    with pytest.raises(ItemValidationError):
        store.save(make())  # type: ignore[arg-type]
    assert snapshot(store) == before
    store.save(Note(id="after", text="still works"))
    assert store.get("after") is not None


@pytest.mark.parametrize("make", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_one_invalid_item_in_save_many_writes_nothing(make: Callable[[], object]) -> None:
    """save_many is all or nothing: one bad item leaves everything as it was."""
    store = note_store()
    before = snapshot(store)
    items = [Note(id="ok1", text=""), make(), Note(id="ok2", text="")]
    with pytest.raises(ItemValidationError, match="item 1"):
        store.save_many(items)  # type: ignore[arg-type]
    assert snapshot(store) == before


def test_a_failure_during_the_transaction_rolls_back_every_write() -> None:
    """An item that fails inside the transaction undoes the items written before it."""
    store = note_store()
    before = snapshot(store)
    with pytest.raises(ItemValidationError):
        store.save_many([Note(id="ok", text=""), Note(id="big", text="", rank=2**63)])
    assert snapshot(store) == before


@pytest.mark.parametrize("bad_id", ["abc", 1.5, None, [1], {"id": 1}])
def test_a_wrong_id_type_is_refused_everywhere(bad_id: Any) -> None:
    """get, get_many, delete, pending and is_pending check the id against the id field."""
    store = NexusStore[Counter, int](":memory:", model=Counter)
    store.save(Counter(id=1))
    before = snapshot(store)
    for call in (store.get, store.delete, store.is_pending, store.pending):
        if call == store.pending and bad_id is None:
            continue  # pending(None) means every item
        with pytest.raises(ItemValidationError):
            call(bad_id)
    with pytest.raises(ItemValidationError):
        store.get_many([1, bad_id])
    assert snapshot(store) == before


def test_a_string_id_store_refuses_integers() -> None:
    """An int where a str id is expected is a type error, not a silent conversion."""
    store = note_store()
    with pytest.raises(ItemValidationError):
        store.get(5)  # type: ignore[arg-type]


def test_every_method_of_a_closed_store_raises() -> None:
    """After close(), every operation raises StoreClosedError."""
    store = note_store()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.save(Note(id="x", text="")),
        lambda: store.save_many([Note(id="x", text="")]),
        lambda: store.get("base"),
        lambda: store.get_many(["base"]),
        store.all,
        store.query,
        store.count,
        lambda: store.delete("base"),
        store.pending,
        lambda: store.is_pending("base"),
        store.watch,
        lambda: store.apply_ack("base", 1),
        lambda: store.stored_version("base"),
        lambda: store.apply_remote_changes([Change(collection="note", item_id="x", version=1)]),
        store.pull_cursor,
        lambda: store.set_pull_cursor(1),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            call()


def test_closed_takes_priority_over_an_invalid_item() -> None:
    """A closed store says it is closed, whatever it is given."""
    store = note_store()
    store.close()
    with pytest.raises(StoreClosedError):
        store.save(None)  # type: ignore[arg-type]


# -- files that are not SQLite, or are damaged ------------------------------------------------


def _open_and_read_everything(path: Path) -> None:
    store = NexusStore[Note, str](path, model=Note)
    try:
        store.all()
        store.count()
        store.pending()
        assert store.database.integrity_check() == ["ok"]
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_a_corrupt_database(tmp_path: Path, seed: int) -> None:
    """A file of random bytes raises CorruptDatabaseError, not a crash or a hang."""
    rng = random.Random(seed)
    path = tmp_path / "random.db"
    path.write_bytes(rng.randbytes(rng.choice([1, 99, 100, 4096, 50_000])))
    with pytest.raises(CorruptDatabaseError):
        _open_and_read_everything(path)


def _real_database(path: Path, items: int = 3000) -> None:
    store = NexusStore[Note, str](path, model=Note, durability="normal")
    store.save_many([Note(id=f"n{i:05d}", text="x" * 200, rank=i) for i in range(items)])
    store.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


@pytest.mark.parametrize("keep", [0.1, 0.4, 0.8])
def test_a_truncated_database_is_corrupt(tmp_path: Path, keep: float) -> None:
    """A database cut short raises CorruptDatabaseError when opened or read."""
    path = tmp_path / "cut.db"
    _real_database(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(int(size * keep) // 4096 * 4096 + 1000)
    with pytest.raises(CorruptDatabaseError):
        _open_and_read_everything(path)


def test_a_zero_filled_header_is_corrupt(tmp_path: Path) -> None:
    """A real database whose first page was zeroed raises CorruptDatabaseError."""
    path = tmp_path / "zero.db"
    _real_database(path, items=50)
    with path.open("r+b") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(CorruptDatabaseError):
        _open_and_read_everything(path)


def test_damaged_pages_are_corrupt(tmp_path: Path) -> None:
    """Garbage written over data pages is reported as CorruptDatabaseError on read."""
    path = tmp_path / "garbage.db"
    _real_database(path)
    rng = random.Random(7)
    size = path.stat().st_size
    with path.open("r+b") as f:
        for page in range(2, size // 4096, 3):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))
    with pytest.raises(CorruptDatabaseError):
        _open_and_read_everything(path)


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    """A path that cannot be opened as a file raises DatabaseError."""
    with pytest.raises(DatabaseError):
        NexusStore[Note, str](tmp_path, model=Note)
    assert os.listdir(tmp_path) == []


# -- unsafe or unusable models and names ---------------------------------------------------


@pytest.mark.parametrize(
    "collection",
    ["bad name", "nx_queue", "sqlite_master", "_nx_x", "1abc", "x" * 64, 'a"b', "", "ümlaut"],
)
def test_an_unsafe_collection_name_is_a_schema_error(tmp_path: Path, collection: str) -> None:
    """Collection names that are not plain identifiers are refused before the file is made."""
    path = tmp_path / "names.db"
    with pytest.raises(SchemaError):
        NexusStore[Note, str](path, model=Note, collection=collection)
    assert not path.exists()


@pytest.mark.parametrize("field", ["a b", 'x"; DROP TABLE note; --', "naïve", "nx_meta"])
def test_an_unsafe_field_name_is_a_schema_error(field: str) -> None:
    """A model whose field names are not safe identifiers is refused."""
    model: type[BaseModel] = create_model("Unsafe", id=(str, ...), **{field: (int, 0)})  # type: ignore[call-overload]
    with pytest.raises(SchemaError):
        NexusStore[Any, str](":memory:", model=model)


def test_unusable_models_are_schema_errors() -> None:
    """No such id field, a non-scalar id, a non-model or a generic model name: SchemaError."""

    class ListId(BaseModel):
        id: list[int]

    with pytest.raises(SchemaError, match="no field"):
        NexusStore[Note, str](":memory:", model=Note, id_field="key")
    with pytest.raises(SchemaError, match="id"):
        NexusStore[ListId, list[int]](":memory:", model=ListId)
    with pytest.raises(SchemaError, match="BaseModel"):
        NexusStore[Any, str](":memory:", model=dict)
    with pytest.raises(SchemaError):
        NexusStore[Box[int], str](":memory:", model=Box[int])
    boxes = NexusStore[Box[int], str](":memory:", model=Box[int], collection="box")
    boxes.save(Box[int](id="b", value=3))
    assert boxes.get("b") == Box[int](id="b", value=3)


def test_bad_arguments_are_refused() -> None:
    """A bad durability or schema version is a ValueError; bad SQL in where a DatabaseError."""
    with pytest.raises(ValueError, match="durability"):
        NexusStore[Note, str](":memory:", model=Note, durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema_version"):
        NexusStore[Note, str](":memory:", model=Note, schema_version=0)
    store = note_store()
    with pytest.raises(DatabaseError):
        store.query("no_such_column = 1")
    with pytest.raises(DatabaseError):
        store.count("1; DROP TABLE note")
    assert store.count() == 1


class Meeting(BaseModel):
    id: str
    at: datetime.datetime
    later: list[datetime.datetime] = []


def test_a_utc_offset_with_seconds_is_refused_not_shifted() -> None:
    """A datetime whose UTC offset has seconds (local mean time: Africa/Accra in 1915 is
    -00:00:52) would read back 52 s off, as its JSON form keeps whole minutes: the save is an
    ItemValidationError that names it, nothing is written; whole-minute offsets are kept."""
    accra = zoneinfo.ZoneInfo("Africa/Accra")
    odd = datetime.datetime(1915, 1, 1, tzinfo=accra)
    with NexusStore[Meeting, str](":memory:", model=Meeting, clock=FakeClock()) as store:
        with pytest.raises(ItemValidationError, match="whole minutes"):
            store.save(Meeting(id="m1", at=odd))
        with pytest.raises(ItemValidationError, match="whole minutes"):
            store.save(Meeting(id="m2", at=datetime.datetime(2000, 1, 1), later=[odd]))
        assert store.count() == 0
        assert store.queue.stats().pending == 0
        kept = datetime.datetime(2026, 1, 1, tzinfo=accra)  # GMT: +00:00
        store.save(Meeting(id="m3", at=kept))
        got = store.get("m3")
        assert got is not None
        assert got.at == kept
