"""Items of models of every kind keep their data through a store and through sync: what one
store pushes in its stored form (field names, JSON values), another pulls and applies
(aliases, strict validation, computed fields); what a store cannot keep is refused."""

from __future__ import annotations

import datetime
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, computed_field

from nexus_store import ItemValidationError, Migrations, NexusStore
from nexus_store.backends import Change, MemoryBackend


class Person(BaseModel):
    id: str = Field(alias="ID")
    full_name: str = Field(alias="fullName")


class PersonV2(BaseModel):
    id: str = Field(alias="ID")
    full_name: str = Field(alias="fullName")
    nick: str = Field(default="", alias="nickName")


class Meeting(BaseModel):
    model_config = ConfigDict(strict=True)

    id: uuid.UUID
    at: datetime.datetime
    day: datetime.date
    room: int


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    price: int
    count: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.price * self.count


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str


class Sample(BaseModel):
    id: str
    points: list[float] = []
    meta: dict[str, Any] = {}


def _round_trip(model: type[BaseModel], item: BaseModel) -> tuple[NexusStore[Any, Any], Any]:
    """Push ``item`` from one store, pull it into a fresh one; the second and its summary."""
    server = MemoryBackend()
    with NexusStore[Any, Any](":memory:", model=model, backend=server, owns_backend=False) as a:
        a.save(item)
        assert a.sync().ok
    b = NexusStore[Any, Any](":memory:", model=model, backend=server, owns_backend=False)
    return b, b.sync()


def test_a_model_with_aliases_is_pulled_by_field_name() -> None:
    person = Person(ID="p1", fullName="Ada Lovelace")
    store, summary = _round_trip(Person, person)
    with store:
        assert (summary.ok, summary.pulled, summary.quarantined) == (True, 1, 0)
        assert store.get("p1") == person


def test_a_strict_model_is_pulled_from_its_json_form() -> None:
    """Dates and UUIDs travel as strings, which only lax validation takes."""
    meeting = Meeting(
        id=uuid.UUID(int=7),
        at=datetime.datetime(2026, 12, 8, 9, 30, tzinfo=datetime.UTC),
        day=datetime.date(2026, 12, 8),
        room=4,
    )
    store, summary = _round_trip(Meeting, meeting)
    with store:
        assert (summary.ok, summary.pulled, summary.quarantined) == (True, 1, 0)
        assert store.get(meeting.id) == meeting


def test_local_rows_of_a_model_with_aliases_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "people.db"
    with NexusStore[Person, str](path, model=Person, collection="person") as old:
        old.save(Person(ID="p1", fullName="Ada Lovelace"))
    steps = Migrations()
    steps.add("person", 1, lambda data: {**data, "nick": "Ada"})
    with NexusStore[PersonV2, str](
        path, model=PersonV2, collection="person", schema_version=2, migrations=steps
    ) as new:
        assert new.get("p1") == PersonV2(ID="p1", fullName="Ada Lovelace", nickName="Ada")


def test_a_model_with_computed_fields_that_forbids_extras_is_pulled() -> None:
    """Its dump (the stored form) holds the computed field; it is left out when validated."""
    order = Order(id="o1", price=3, count=4)
    store, summary = _round_trip(Order, order)
    with store:
        assert (summary.ok, summary.pulled, summary.quarantined) == (True, 1, 0)
        pulled = store.get("o1")
        assert pulled == order
        assert pulled is not None
        assert pulled.total == 12


def test_attributes_that_are_not_fields_are_refused_not_dropped() -> None:
    """A store keeps fields only: an item carrying more fails to save and writes nothing."""
    with NexusStore[Loose, str](":memory:", model=Loose) as store:
        with pytest.raises(ItemValidationError, match=r"not fields \(colour\)"):
            store.save(Loose(id="x", colour="red"))
        with pytest.raises(ItemValidationError, match="not fields"):
            store.save_many([Loose(id="y"), Loose(id="z", colour="red")])
        assert (store.count(), store.queue.stats().live) == (0, 0)
        store.save(Loose(id="y"))  # no extra attribute: kept as any item
        assert store.get("y") == Loose(id="y")


def test_an_infinite_number_where_the_model_takes_any_value_is_refused_not_nulled() -> None:
    """pydantic's JSON form writes it as null: the save fails and writes nothing; where
    the type is float, such a number is stored and read back as it is."""
    with NexusStore[Sample, str](":memory:", model=Sample) as store:
        with pytest.raises(ItemValidationError, match=r"Sample\.meta holds an infinite or NaN"):
            store.save(Sample(id="s1", meta={"peak": [1.0, math.inf]}))
        assert (store.count(), store.queue.stats().live) == (0, 0)
        store.save(Sample(id="s2", points=[1.0, math.inf], meta={"note": None, "n": 1.5}))
        kept = store.get("s2")
        assert kept is not None
        assert kept.points == [1.0, math.inf]
        assert kept.meta == {"note": None, "n": 1.5}
        # A pulled change holding one is quarantined with the reason, not stored as None.
        change = Change(
            collection="sample", item_id="s3", version=1, data={"id": "s3", "meta": {"x": math.nan}}
        )
        assert store.apply_pulled([change]).quarantined == 1
        assert store.get("s3") is None
