"""save() with generated models and values: every item is stored and read back as it was
dumped, or refused with ItemValidationError and nothing is written."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, create_model

from nexus_store import ItemValidationError, NexusStore
from nexus_store._codec import decode
from nexus_store.testing import FakeClock


class Color(enum.Enum):
    """An enum field type."""

    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    """A nested model."""

    name: str
    n: int = 0


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
_wild_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,  # lone surrogates included
    st.binary(max_size=20),  # often not UTF-8
    st.decimals(allow_nan=True),
    st.datetimes(),
    st.uuids(),
)
_wild = st.recursive(
    _wild_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_text, st.integers()), inner, max_size=4),
        st.tuples(inner, inner),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=12,
)
_nested = st.integers(min_value=0, max_value=1500).map(_deep)

# Field types and values that fit them (mostly), and wild values that may not.
_FIELD_TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "str": (str, _text),
    "int": (int, st.integers(min_value=-(2**70), max_value=2**70)),
    "float": (float, st.floats(allow_nan=True, allow_infinity=True)),
    "bool": (bool, st.booleans()),
    "bytes": (bytes, st.binary(max_size=30)),
    "any": (Any, st.one_of(_wild, _nested)),
    "list_int": (list[int], st.lists(st.integers(min_value=-(2**66), max_value=2**66))),
    "dict_any": (dict[str, Any], st.dictionaries(_text, _wild, max_size=4)),
    "opt_int": (int | None, st.one_of(st.none(), st.integers(-(2**65), 2**65))),
    "opt_float": (float | None, st.one_of(st.none(), st.floats())),
    "datetime": (datetime.datetime, st.datetimes(timezones=st.none() | st.timezones())),
    "date": (datetime.date, st.dates()),
    "uuid": (uuid.UUID, st.uuids()),
    "decimal": (decimal.Decimal, st.decimals(allow_nan=True)),
    "literal": (Literal["a", "b"], st.sampled_from(["a", "b", "c"])),
    "enum": (Color, st.sampled_from(list(Color))),
    "inner": (Inner, st.builds(Inner, name=_text, n=st.integers(-(2**70), 2**70))),
    "int_or_str": (int | str, st.one_of(st.integers(-(2**65), 2**65), _text)),
    "list_inner": (list[Inner], st.lists(st.builds(Inner, name=_text), max_size=3)),
}


@st.composite
def models_and_values(draw: st.DrawFn) -> tuple[type[BaseModel], list[dict[str, Any]], bool]:
    """A model of 1-5 generated fields, and values for a few items (maybe wrongly typed)."""
    names = draw(st.lists(st.sampled_from(sorted(_FIELD_TYPES)), min_size=1, max_size=5))
    fields: dict[str, Any] = {"id": (str, ...)}
    for i, name in enumerate(names):
        fields[f"f{i}_{name}"] = (_FIELD_TYPES[name][0], ...)
    base64 = draw(st.booleans())
    config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64") if base64 else None
    model = create_model("Fuzzed", __config__=config, **fields)
    items = []
    for n in range(draw(st.integers(1, 4))):
        values: dict[str, Any] = {"id": draw(st.one_of(st.just(f"i{n}"), _text))}
        for i, name in enumerate(names):
            strategy = _FIELD_TYPES[name][1]
            values[f"f{i}_{name}"] = draw(st.one_of(strategy, _wild) if n % 2 else strategy)
        items.append(values)
    return model, items, base64


def _snapshot(store: NexusStore[Any, Any]) -> tuple[Any, ...]:
    rows = store.database.execute("SELECT * FROM fuzzed ORDER BY id")
    ops = store.database.execute("SELECT op_id, payload FROM nx_queue ORDER BY seq")
    return tuple(rows), tuple(ops)


def _check_save(model: type[BaseModel], items: list[dict[str, Any]]) -> tuple[int, int]:
    stored = refused = 0
    with NexusStore[Any, Any](":memory:", model=model, clock=FakeClock()) as store:
        for values in items:
            item = model.model_construct(**values)  # unvalidated, as after attribute assignment
            before = _snapshot(store)
            try:
                saved = store.save(item)
            except ItemValidationError:
                assert _snapshot(store) == before, "a refused save wrote something"
                refused += 1
                continue
            stored += 1
            dumped = saved.model_dump(mode="json")
            read = store.get(saved.id)  # type: ignore[attr-defined]
            assert read is not None
            assert read.model_dump(mode="json") == dumped
            op = store.pending(saved.id)[-1]  # type: ignore[attr-defined]
            assert op.payload is not None
            assert decode(op.payload) == dumped
    return stored, refused


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(models_and_values())
def test_save_stores_exactly_or_refuses_with_item_validation_error(
    case: tuple[type[BaseModel], list[dict[str, Any]], bool],
) -> None:
    """Any model, any value: save() round-trips, or raises ItemValidationError writing nothing."""
    model, items, _ = case
    _check_save(model, items)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(models_and_values())
def test_save_fuzz_3000_models(case: tuple[type[BaseModel], list[dict[str, Any]], bool]) -> None:
    """The same over 3,000 generated models."""
    model, items, _ = case
    _check_save(model, items)


class Anything(BaseModel):
    """One field of any type."""

    id: str
    value: Any = None
    blob: bytes = b""
    ratio: float = 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", _deep(1000)),
        ("value", _deep(600)),
        ("blob", b"\xff\xfe not utf-8"),
        ("value", b"\x80"),
        ("ratio", float("nan")),
        ("value", "\ud800"),
        ("value", 2**70),
        ("value", object()),
    ],
    ids=[
        "nested-1000",
        "nested-600",
        "bytes-not-utf8",
        "any-bytes",
        "nan",
        "surrogate",
        "bigint",
        "object",
    ],
)
def test_unstorable_values_are_item_validation_errors(field: str, value: Any) -> None:
    """Deep nesting, non-UTF-8 bytes, NaN, lone surrogates...: ItemValidationError, no write."""
    with NexusStore[Anything, str](":memory:", model=Anything, clock=FakeClock()) as store:
        with pytest.raises(ItemValidationError):
            store.save(Anything.model_construct(id="x", **{field: value}))
        with pytest.raises(ItemValidationError):
            store.save_many([Anything(id="ok"), Anything.model_construct(id="y", **{field: value})])
        assert store.count() == 0
        assert store.queue.stats().total == 0
        with pytest.raises(ItemValidationError):
            store.get("\ud800")
