"""The server's batch fast path prepares exactly what the op-by-op path prepares.

:func:`prepare_wire_batch` checks the common op inline; whatever it takes, it must take
as :func:`prepare_wire` does (same key, blob, fingerprint, reason), and whatever it does
not take it hands back to that reference, so a push is accepted, rejected or refused
exactly as before, with the same reasons.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_store.backends import RemoteOp
from nexus_store.server._app import _HttpError, _parse_ops, _validated
from nexus_store.server._prepare import (
    PreparedOp,
    _prepare_common,
    prepare,
    prepare_wire,
    prepare_wire_batch,
)

_FIELDS = sorted(RemoteOp.model_fields)
_text = st.text(alphabet=st.sampled_from("ab\x00é\U0001f600-"), max_size=5)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False),
    _text,
    st.binary(max_size=3),
)
_odd = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(_text, _scalars, max_size=2),
    st.dictionaries(st.integers(0, 3), _scalars, max_size=2),
)
_data = st.one_of(
    st.none(),
    st.dictionaries(_text, _scalars, max_size=4),
    st.dictionaries(st.one_of(_text, st.integers(0, 3)), _odd, max_size=3),
)
_common = st.fixed_dictionaries(
    {
        "op_id": st.one_of(st.text(min_size=1, max_size=64), _text),
        "collection": st.one_of(st.just("notes"), _text, st.text(min_size=60, max_size=66)),
        "item_id": st.one_of(_text, st.integers(-(2**64), 2**64), st.booleans()),
        "kind": st.sampled_from(["upsert", "delete", "patch"]),
        "data": _data,
        "base_version": st.one_of(st.integers(-2, 2**64), st.booleans()),
        "hlc": st.one_of(
            st.just("1700000000000-00000-a"), _text, st.text(min_size=63, max_size=66)
        ),
        "schema_version": st.one_of(st.integers(-1, 3), st.booleans()),
    }
)


@st.composite
def _raw_ops(draw: st.DrawFn) -> Any:
    """Ops as a msgpack body may hold them: mostly near the common op, some odd."""
    fields = draw(_common)
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=2)):
        fields.pop(name, None)  # a field left out (some have defaults)
    if draw(st.booleans()) and draw(st.booleans()):
        fields[draw(st.sampled_from(["extra", "op_id", "data"]))] = draw(_odd)
    raw = draw(st.one_of(st.just(fields), _odd))
    # What a msgpack body gives: decode(encode(raw)); lists stay lists, bytes stay bytes.
    try:
        return msgpack.unpackb(msgpack.packb(raw), strict_map_key=False)
    except (TypeError, ValueError, OverflowError):
        return fields if isinstance(raw, dict) else None


@settings(max_examples=400)
@given(st.lists(_raw_ops(), max_size=6))
def test_batch_fast_path_prepares_what_prepare_wire_prepares(raws: list[Any]) -> None:
    assert prepare_wire_batch(raws) == [prepare_wire(raw) for raw in raws]


def _without_origin(op: PreparedOp) -> PreparedOp:
    return dataclasses.replace(op, origin=None)


def _parse_op_by_op(body: Any) -> list[PreparedOp]:
    """The push body's ops as the server prepared them before the batch fast path."""
    ops = []
    for position, raw in enumerate(body["ops"]):
        op = prepare_wire(raw)
        ops.append(op if op is not None else _validated(raw, position))
    return ops


@settings(max_examples=300)
@given(st.lists(_raw_ops(), max_size=5))
def test_push_body_is_parsed_as_op_by_op(raws: list[Any]) -> None:
    """Same ops, same rejections with the same reasons, same refusals of the batch."""
    body = {"ops": raws}
    refusal: tuple[int, str] | None = None
    try:
        expected = _parse_op_by_op(body)
    except _HttpError as exc:
        refusal = (exc.status, exc.detail)
    if refusal is not None:
        with pytest.raises(_HttpError) as caught:
            _parse_ops(body, "msgpack")
        assert (caught.value.status, caught.value.detail) == refusal
        return
    got = _parse_ops(body, "msgpack")
    assert [_without_origin(op) for op in got] == [_without_origin(op) for op in expected]


def test_common_ops_take_the_fast_path_and_match_the_model() -> None:
    """The ops a client sends are prepared as from the validated model."""
    ops = [
        RemoteOp(
            op_id=f"op{i}",
            collection="notes",
            item_id=item,
            kind=kind,
            data={"b": 1, "a": "x", "c": None, "d": 1.5, "e": b"\x01", "f": True}
            if kind == "upsert"
            else None,
            base_version=i,
            hlc="1700000000000-00000-a",
            schema_version=2,
        )
        for i, (item, kind) in enumerate([("a", "upsert"), (7, "upsert"), ("b", "delete")])
    ]
    raws = msgpack.unpackb(msgpack.packb([op.model_dump() for op in ops]))
    assert all(_prepare_common(raw) is not None for raw in raws)
    got = prepare_wire_batch(raws)
    assert [_without_origin(op) for op in got if op is not None] == [
        _without_origin(prepare(op)) for op in ops
    ]
