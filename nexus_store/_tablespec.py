"""How a pydantic model maps to a table: column kinds, names, ordering, migrations (pure).

:func:`column_kind` decides how each top-level field is stored; :class:`TableSpec` is a
collection's table as the model describes it (columns, id field, bookkeeping columns);
:func:`plan_migration` says what changes an existing table needs; :func:`order_by_sql`
checks an ``order_by`` against the model's fields; :func:`remote_change_action` decides
whether a pulled change may overwrite the local row. Nothing here touches a database.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import re
import types
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    NamedTuple,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import BaseModel

from ._database import quote_identifier, validate_identifier
from ._exceptions import SchemaError

T = TypeVar("T", bound=BaseModel)

__all__ = [
    "ColumnKind",
    "ItemKey",
    "Migration",
    "PreparedItem",
    "TableSpec",
    "column_kind",
    "order_by_sql",
    "plan_migration",
    "remote_change_action",
    "snake_case",
]

ItemKey = str | int
"""An item id as stored and sent: the JSON form of the model's id field."""
_TEXT_TYPES = (
    str,
    bytes,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    pathlib.PurePath,
)
BOOKKEEPING = ("_nx_version", "_nx_deleted", "_nx_hlc", "_nx_updated_at")
_BOOKKEEPING_TYPES = {
    "_nx_version": "INTEGER",
    "_nx_deleted": "INTEGER",
    "_nx_hlc": "TEXT",
    "_nx_updated_at": "REAL",
}


class ColumnKind(enum.StrEnum):
    """How a field's JSON value is kept in its column."""

    INTEGER = "integer"
    """An integer, stored as is."""
    BOOLEAN = "boolean"
    """A bool, stored as INTEGER 0/1 and read back as a bool."""
    REAL = "real"
    """A float, stored as is."""
    TEXT = "text"
    """A value whose JSON form is a string (str, datetime, UUID, Decimal, enums of str...)."""
    JSON = "json"
    """Anything else (lists, dicts, nested models, mixed unions): JSON text."""

    @property
    def sql_type(self) -> str:
        """The SQLite column type."""
        return {"integer": "INTEGER", "boolean": "INTEGER", "real": "REAL"}.get(self, "TEXT")


def _kind_of_values(values: Iterable[object]) -> ColumnKind:
    vals = list(values)
    if vals and all(isinstance(v, bool) for v in vals):
        return ColumnKind.BOOLEAN
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return ColumnKind.INTEGER
    if vals and all(isinstance(v, str) for v in vals):
        return ColumnKind.TEXT
    return ColumnKind.JSON


def column_kind(annotation: Any) -> ColumnKind:
    """Choose how a field with this type annotation is stored.

    ``X | None`` is stored like ``X`` (``None`` is NULL); unions of several types are JSON,
    so that ``int | str`` keeps ``5`` and ``"5"`` apart.
    """
    origin = get_origin(annotation)
    if origin is Annotated:
        return column_kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(annotation) if a is not type(None)]
        return column_kind(arms[0]) if len(arms) == 1 else ColumnKind.JSON
    if origin is Literal:
        return _kind_of_values(get_args(annotation))
    if origin is not None:
        return ColumnKind.JSON
    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return column_kind(supertype)
    if not isinstance(annotation, type):
        return ColumnKind.JSON
    if issubclass(annotation, enum.Enum):
        return _kind_of_values(member.value for member in annotation)
    if issubclass(annotation, bool):
        return ColumnKind.BOOLEAN
    if issubclass(annotation, int):
        return ColumnKind.INTEGER
    if issubclass(annotation, float):
        return ColumnKind.REAL
    if issubclass(annotation, _TEXT_TYPES):
        return ColumnKind.TEXT
    return ColumnKind.JSON


def _allows_none(annotation: Any) -> bool:
    """Whether ``None`` is a valid value of the annotation (``X | None``, ``Any``...)."""
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _allows_none(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_allows_none(arm) for arm in get_args(annotation))
    return False


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``"FieldReport"`` -> ``"field_report"``, ``"HTTPLog"`` -> ``"http_log"``."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


_ORDER_TERM = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)(?:\s+(asc|desc))?\s*$", re.IGNORECASE)


def order_by_sql(order_by: str | Sequence[str], fields: Collection[str]) -> str:
    """Turn ``"name"``, ``"name desc"`` or ``"a, b desc"`` (or a list of terms) into SQL.

    Only the model's field names are allowed, so an ``order_by`` never carries SQL.

    Raises:
        ValueError: a term that is not a field name with an optional ``asc``/``desc``.
    """
    terms = order_by.split(",") if isinstance(order_by, str) else list(order_by)
    parts = []
    for term in terms:
        match = _ORDER_TERM.match(term)
        if not match or match.group(1) not in fields:
            raise ValueError(
                f"order_by term {term!r} must be a field of the model, optionally followed by "
                f"'asc' or 'desc' (fields: {', '.join(sorted(fields))})"
            )
        direction = (match.group(2) or "asc").upper()
        parts.append(f"{quote_identifier(match.group(1))} {direction}")
    if not parts:
        raise ValueError("order_by names no field")
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Migration:
    """What opening a table must change: columns to add and columns to retype."""

    add: dict[str, str]
    retype: dict[str, str]

    def __bool__(self) -> bool:
        return bool(self.add or self.retype)


def _normal_type(sql_type: str) -> str:
    upper = sql_type.upper()
    return "REAL" if upper in ("FLOAT", "DOUBLE", "REAL") else upper


def plan_migration(existing: Mapping[str, str], wanted: Mapping[str, str]) -> Migration:
    """Compare a table's columns (name -> SQL type) with the wanted ones.

    Columns that are no longer wanted are kept untouched (their data stays readable with
    plain SQL), so a field removed by mistake loses nothing.
    """
    add = {name: t for name, t in wanted.items() if name not in existing}
    retype = {
        name: t
        for name, t in wanted.items()
        if name in existing and _normal_type(existing[name]) != _normal_type(t)
    }
    return Migration(add=add, retype=retype)


RemoteAction = Literal["apply", "skip_pending", "skip_stale"]


def remote_change_action(
    change_version: int, stored_version: int | None, *, has_pending_op: bool
) -> RemoteAction:
    """Decide whether a pulled change may overwrite the local row.

    A local item with a queued op is never overwritten (the op is pushed first and the
    conflict rule decides on the server); an older or repeated change is ignored.
    """
    if has_pending_op:
        return "skip_pending"
    if stored_version is not None and stored_version >= change_version:
        return "skip_stale"
    return "apply"


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A model's table layout, derived from the model alone (no I/O).

    Raises:
        SchemaError: unsafe table or field names, or no such id field.
    """

    model: type[BaseModel]
    table: str
    id_field: str
    kinds: dict[str, ColumnKind]

    @classmethod
    def from_model(cls, model: type[BaseModel], *, id_field: str, table: str) -> TableSpec:
        """Build the spec, validating every name that will reach SQL."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SchemaError(f"model must be a pydantic BaseModel subclass, not {model!r}")
        validate_identifier(table, what="collection")
        if id_field not in model.model_fields:
            raise SchemaError(f"{model.__name__} has no field {id_field!r} to use as id")
        kinds: dict[str, ColumnKind] = {}
        for name, info in model.model_fields.items():
            if info.exclude is True:
                continue  # never in model_dump(), so never stored
            validate_identifier(name, what=f"{model.__name__} field")
            kinds[name] = column_kind(info.annotation)
        if id_field not in kinds:
            raise SchemaError(f"{model.__name__}.{id_field} is excluded from serialization")
        if kinds[id_field] not in (ColumnKind.TEXT, ColumnKind.INTEGER):
            raise SchemaError(
                f"{model.__name__}.{id_field} must be a string-like or integer type to be an id"
            )
        return cls(model=model, table=table, id_field=id_field, kinds=kinds)

    @property
    def fields(self) -> list[str]:
        """The model's field names, in declaration order."""
        return list(self.kinds)

    def required_json(self) -> str:
        """The fields an item must have a non-null value for, as a JSON list (what a sync
        worker without the model checks pulled changes against)."""
        required = []
        for name in self.kinds:
            info = self.model.model_fields[name]
            nullable = column_kind(info.annotation) is ColumnKind.JSON or _allows_none(
                info.annotation
            )
            if info.is_required() and not nullable:
                required.append(name)
        return json.dumps(required)

    def kinds_json(self) -> str:
        """The column kind of every field, as a JSON object (``{"tags": "json", ...}``)."""
        return json.dumps({name: kind.value for name, kind in self.kinds.items()})

    @property
    def column_types(self) -> dict[str, str]:
        """Every column the table needs (fields then bookkeeping) with its SQL type."""
        types_ = {name: kind.sql_type for name, kind in self.kinds.items()}
        return types_ | _BOOKKEEPING_TYPES


class PreparedItem(NamedTuple, Generic[T]):
    """An item checked and converted, ready to write (built outside any transaction)."""

    item: T
    """The validated item, as it will be read back."""
    key: ItemKey
    """The id in its stored form."""
    values: list[Any]
    """The column values, in :attr:`TableSpec.fields` order."""
    payload: bytes
    """The encoded ``model_dump(mode="json")`` for the queue."""
