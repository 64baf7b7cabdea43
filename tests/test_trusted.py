"""Records built without validation behave exactly as validated ones, or are validated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from nexus_store import SyncPriority
from nexus_store._remote import is_plain_op
from nexus_store._trusted import _hash_or_none, trusted_builder
from nexus_store.backends import OpResult, OpStatus, RemoteOp
from nexus_store.queue import OpKind, OpState, QueuedOp
from nexus_store.sync.engine._push import _remote_op

QUEUED: dict[str, Any] = {
    "op_id": "0190c3a2-0000-7000-8000-000000000001",
    "seq": 7,
    "collection": "notes",
    "item_id": "n1",
    "kind": OpKind.DELETE,
    "priority": SyncPriority.NORMAL,
    "payload": None,
    "schema_version": 3,
    "base_version": 12,
    "hlc": "1700000000000-00001-dev",
    "state": OpState.LEASED,
    "attempts": 1,
    "next_attempt_at": 5.5,
    "leased_until": 9.0,
    "last_error": "503",
    "error_kind": None,
    "tag": "t",
    "created_at": 1.0,
    "updated_at": 2.0,
    "blocked": False,
    "lease_count": 2,
}

ACCEPTED: dict[str, Any] = {
    "op_id": "o",
    "status": OpStatus.ACCEPTED,
    "version": 4,
    "item": None,
    "reason": None,
    "retry_after": None,
}


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (QueuedOp, QUEUED),
        (
            RemoteOp,
            {
                "op_id": "o",
                "collection": "c",
                "item_id": 5,
                "kind": "upsert",
                "data": {"a": [1, {"b": None}]},
                "base_version": 3,
                "hlc": "h",
                "schema_version": 2,
            },
        ),
        (OpResult, ACCEPTED),
    ],
)
def test_built_records_equal_validated_ones(model: type[BaseModel], values: dict[str, Any]) -> None:
    """Equality, hash, dump, repr, fields-set and copies match a validated instance."""
    build = trusted_builder(model, values)
    built, validated = build(dict(values)), model(**values)
    assert built == validated
    assert _hash_or_none(built) == _hash_or_none(validated)  # RemoteOp's dict data: None
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert repr(built) == repr(validated)
    assert built.model_fields_set == validated.model_fields_set
    first = next(iter(values))
    copied = built.model_copy(update={first: values[first]})
    assert copied == validated
    assert build.__name__ == "build"  # this pydantic agrees: no validation on the hot path


def test_the_sync_runs_builder_skips_validation() -> None:
    """The wire op builder a sync run uses is the fast one with this pydantic."""
    assert _remote_op.__name__ == "build"


class _WithPrivate(BaseModel):
    model_config = ConfigDict(frozen=True)
    x: int
    _cache: dict[str, int] = PrivateAttr(default_factory=dict)


def test_a_model_the_builder_cannot_mimic_is_validated() -> None:
    """With private attributes a built instance would differ: the builder validates."""
    build = trusted_builder(_WithPrivate, {"x": 1})
    record = build({"x": "2"})
    assert record.x == 2  # converted: it went through validation
    assert record._cache == {}


def test_the_sample_must_name_every_field() -> None:
    with pytest.raises(ValueError, match="exactly its fields"):
        trusted_builder(RemoteOp, {"op_id": "o"})


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70),
    st.floats(allow_nan=False),
    st.text(max_size=70),
    st.binary(max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=2),
)


_plain = st.fixed_dictionaries(
    {
        "op_id": st.text(min_size=1, max_size=64),
        "collection": st.text(min_size=1, max_size=63),
        "item_id": st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)),
        "kind": st.sampled_from(["upsert", "delete"]),
        "data": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), _values, max_size=3)),
        "base_version": st.integers(min_value=0, max_value=2**63 - 1),
        "hlc": st.text(min_size=1, max_size=64),
        "schema_version": st.integers(min_value=1),
    }
)


@given(_plain, st.dictionaries(st.sampled_from(sorted(RemoteOp.model_fields)), _values, max_size=2))
def test_plain_ops_are_what_validation_takes_as_they_are(
    fields: dict[str, Any], changed: dict[str, Any]
) -> None:
    """Whatever is_plain_op passes, RemoteOp accepts unchanged (so it may skip validation);
    what it does not pass, the model converts or refuses."""
    fields = {**fields, **changed}
    if is_plain_op(**fields):
        assert RemoteOp(**fields).__dict__ == fields
        assert _remote_op(dict(fields)) == RemoteOp(**fields)
        return
    assert changed  # every op of the plain strategy passes
    try:
        converted = RemoteOp(**fields).__dict__
    except ValidationError:
        return
    assert any(type(converted[k]) is not type(v) for k, v in fields.items()) or any(
        isinstance(v, dict) and any(type(key) is not str for key in v) for v in fields.values()
    )
