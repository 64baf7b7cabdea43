"""Ops as the server core sees them: checked, canonical, fingerprinted (pure).

:func:`prepare_wire` takes an op as decoded from a msgpack body (full validation only for
what is not already of the wire types) and :func:`prepare` a validated
:class:`~nexus_store.backends.RemoteOp`; both give a :class:`PreparedOp` whose data is in
canonical form (map keys sorted) with a fingerprint of its payload. Data nested deeper
than 64 levels is refused before anything recurses over it. Item ids travel as canonical
JSON keys (:func:`item_key_of`, :func:`item_id_of`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from .._codec import encode, encode_map_pairs
from .._exceptions import CodecError
from .._remote import (
    MAX_COLLECTION,
    MAX_HLC,
    MAX_INT,
    MAX_OP_ID,
    MIN_INT,
    ItemId,
    RemoteOp,
    is_plain_op,
)
from .storage._base import ItemKey

__all__ = [
    "PreparedOp",
    "canonical",
    "item_id_of",
    "item_key_of",
    "prepare",
    "prepare_wire",
    "prepare_wire_batch",
    "refused",
]


def item_key_of(item_id: ItemId) -> str:
    """The stored key of an item id: canonical JSON, so ``1`` and ``"1"`` stay apart."""
    if type(item_id) is str:
        return encode_basestring(item_id)  # what json.dumps does, without its overhead
    if type(item_id) is int:
        return int.__repr__(item_id)
    return json.dumps(item_id, ensure_ascii=False)


def item_id_of(item_key: str) -> ItemId:
    """The item id a stored key was made from (inverse of :func:`item_key_of`)."""
    # Keys made by item_key_of: a string without escapes, or a plain integer, is read
    # without the JSON parser (this runs for every change pulled).
    if len(item_key) >= 2 and item_key[0] == '"' == item_key[-1] and "\\" not in item_key:
        return item_key[1:-1]
    if item_key.isascii() and item_key.lstrip("-").isdigit() and item_key[1:2] != "-":
        return int(item_key)
    value = json.loads(item_key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"not an item key: {item_key!r}")
    return value


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_MAX_DEPTH = 64
_TOO_DEEP = f"the item's data nests deeper than {_MAX_DEPTH} levels"
_OP_FIELDS = frozenset(RemoteOp.model_fields)
_blake2b = hashlib.blake2b


class _TooDeepError(Exception):
    """Raised by :func:`_canonical` past ``_MAX_DEPTH`` levels."""


def canonical(value: Any) -> Any:
    """``value`` with every map's keys in sorted order (tuples become lists).

    Raises:
        ValueError: maps and lists nest deeper than 64 levels.
    """
    try:
        return _canonical(value, 1)
    except _TooDeepError:
        raise ValueError(_TOO_DEEP) from None


def _canonical(value: Any, depth: int) -> Any:
    # This runs for every op: scalars are tested inline rather than recursed into, and a
    # plain loop builds the map (cheaper than a comprehension). The depth bound keeps a
    # poison op from reaching the recursion limit.
    if isinstance(value, dict):
        if depth > _MAX_DEPTH:
            raise _TooDeepError
        try:
            keys = sorted(value)
        except TypeError:  # mixed key types have no order: keep the one given
            keys = list(value)
        out = {}
        for k in keys:
            v = value[k]
            out[k] = v if type(v) in _SCALARS else _canonical(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        if depth > _MAX_DEPTH:
            raise _TooDeepError
        return [v if type(v) in _SCALARS else _canonical(v, depth + 1) for v in value]
    return value


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, per op
class PreparedOp:
    """An op with what the rules need precomputed, outside any transaction."""

    op_id: str
    key: ItemKey
    kind: str
    """``"upsert"`` or ``"delete"``."""
    base_version: int
    hlc: str
    schema_version: int
    blob: bytes | None
    """The data to store, encoded (``None`` for a delete)."""
    fingerprint: bytes
    invalid: str | None = None
    """Why the op is refused whatever the server holds, if it is."""
    origin: RemoteOp | dict[str, Any] | None = None
    """The op as received (a model, or its wire fields): what a resolver is shown."""

    @property
    def op(self) -> RemoteOp:
        """The op as a :class:`RemoteOp` (built on demand from wire fields)."""
        origin = self.origin
        if isinstance(origin, RemoteOp):
            return origin
        op = RemoteOp.model_validate(origin)
        self.origin = op
        return op


def prepare(op: RemoteOp) -> PreparedOp:
    """Check ``op`` against the rules, encode its data and fingerprint its payload."""
    return _prepare(
        op.op_id,
        op.collection,
        op.item_id,
        op.kind,
        op.data,
        op.base_version,
        op.hlc,
        op.schema_version,
        op,
    )


def prepare_wire(raw: Any) -> PreparedOp | None:
    """Prepare an op decoded from a msgpack body, if it is exactly of the wire types.

    This is :func:`prepare` without building a :class:`RemoteOp`: the checks are the
    model's for values that need no conversion. ``None`` means "validate it in full"
    (a value of another type, which the model may convert or refuse with its reason).
    Strings decoded from msgpack are valid UTF-8 already; JSON input may hold lone
    surrogates, which the model refuses, so it should take the full path.
    """
    if type(raw) is not dict or not _OP_FIELDS.issuperset(raw):
        return None
    try:
        op_id = raw["op_id"]
        collection = raw["collection"]
        item_id = raw["item_id"]
        kind = raw["kind"]
        hlc = raw["hlc"]
    except KeyError:
        return None
    data = raw.get("data")
    base_version = raw.get("base_version", 0)
    schema_version = raw.get("schema_version", 1)
    if not is_plain_op(op_id, collection, item_id, kind, data, base_version, hlc, schema_version):
        return None
    return _prepare(op_id, collection, item_id, kind, data, base_version, hlc, schema_version, raw)


def prepare_wire_batch(raw_ops: list[Any]) -> list[PreparedOp | None]:
    """:func:`prepare_wire` of every op of a decoded msgpack batch, in order.

    Gives exactly what :func:`prepare_wire` gives for each op: the common op (every field
    sent, of the wire types, an upsert whose data is a flat map of scalars, or a delete
    without data) is checked and prepared in one function, without a call per check; any
    other is handed to :func:`prepare_wire` itself.
    """
    prepared: list[PreparedOp | None] = []
    append = prepared.append
    fields = len(_OP_FIELDS)
    for raw in raw_ops:
        op = _prepare_common(raw) if type(raw) is dict and len(raw) == fields else None
        append(op if op is not None else prepare_wire(raw))
    return prepared


def _prepare_common(raw: dict[str, Any]) -> PreparedOp | None:
    """:func:`prepare_wire` of a common op, inline (``None``: not a common op)."""
    try:
        op_id = raw["op_id"]
        collection = raw["collection"]
        item_id = raw["item_id"]
        kind = raw["kind"]
        data = raw["data"]
        base_version = raw["base_version"]
        hlc = raw["hlc"]
        schema_version = raw["schema_version"]
    except KeyError:
        return None
    # is_plain_op's checks and _prepare's NUL check, for the common op only.
    if (
        type(op_id) is not str
        or not 0 < len(op_id) <= MAX_OP_ID
        or type(collection) is not str
        or not 0 < len(collection) <= MAX_COLLECTION
        or type(hlc) is not str
        or not 0 < len(hlc) <= MAX_HLC
        or type(base_version) is not int
        or not 0 <= base_version <= MAX_INT
        or type(schema_version) is not int
        or schema_version < 1
        or "\x00" in op_id
        or "\x00" in collection
        or "\x00" in hlc
    ):
        return None
    if type(item_id) is str:
        item_key = encode_basestring(item_id)
    elif type(item_id) is int and MIN_INT <= item_id <= MAX_INT:
        item_key = int.__repr__(item_id)
    else:
        return None
    if kind == "upsert" and type(data) is dict:
        scalars = _SCALARS
        for key, value in data.items():
            if type(key) is not str or type(value) not in scalars:
                return None
        try:  # str keys: sorting the pairs sorts the keys (_canonical's order)
            payload = encode_map_pairs(sorted(data.items()))
        except CodecError:
            return None
        blob: bytes | None = payload
    elif kind == "delete" and data is None:
        payload = b""
        blob = None
    else:
        return None
    header = (
        f"{collection}\x00{item_key}\x00{kind}\x00{base_version}\x00{hlc}\x00{schema_version}\x00"
    )
    return PreparedOp(
        op_id,
        (collection, item_key),
        kind,
        base_version,
        hlc,
        schema_version,
        blob,
        _blake2b(header.encode() + payload, digest_size=16).digest(),
        None,
        raw,
    )


def refused(op_id: str, reason: str) -> PreparedOp:
    """An op refused before preparing (it failed validation): answered ``REJECTED``."""
    return PreparedOp(op_id, ("", ""), "", 0, "", 1, None, b"", reason)


def _prepare(  # noqa: PLR0917 - the fields of an op, positional for speed
    op_id: str,
    collection: str,
    item_id: ItemId,
    kind: str,
    data: dict[str, Any] | None,
    base_version: int,
    hlc: str,
    schema_version: int,
    origin: RemoteOp | dict[str, Any],
) -> PreparedOp:
    # item_key_of, inline: this runs for every op.
    item_key = encode_basestring(item_id) if type(item_id) is str else item_key_of(item_id)
    invalid: str | None = None
    payload = b""
    if "\x00" in op_id or "\x00" in collection or "\x00" in hlc:
        invalid = "op_id, collection and hlc must not contain NUL characters"
    elif data is not None:
        try:
            payload = encode(_canonical(data, 1))
        except _TooDeepError:
            invalid = _TOO_DEEP
        except CodecError as exc:
            invalid = f"the item's data cannot be encoded: {exc}"
    elif kind == "upsert":
        invalid = "an upsert must carry the item's data"
    if invalid is not None:
        return PreparedOp(
            op_id,
            (collection, item_key),
            kind,
            base_version,
            hlc,
            schema_version,
            None,
            b"",
            invalid,
            origin,
        )
    header = (
        f"{collection}\x00{item_key}\x00{kind}\x00{base_version}\x00{hlc}\x00{schema_version}\x00"
    )
    fingerprint = hashlib.blake2b(header.encode() + payload, digest_size=16).digest()
    return PreparedOp(
        op_id,
        (collection, item_key),
        kind,
        base_version,
        hlc,
        schema_version,
        payload if kind == "upsert" else None,
        fingerprint,
        None,
        origin,
    )
