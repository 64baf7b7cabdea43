"""Local tables: one SQLite table per collection, mapped from a pydantic model.

A model's top-level fields become columns (see :func:`~._tablespec.column_kind` for the type
of each), the id field is the primary key, and four bookkeeping columns follow the item:

- ``_nx_version``: the item's server version (0 until the server acknowledged a write);
- ``_nx_deleted``: 1 for a tombstone (a deleted item that syncs its deletion);
- ``_nx_hlc``: the hybrid logical clock stamp of the last write;
- ``_nx_updated_at``: when the row was last written (seconds since the epoch).

The schema is created and migrated with sqlite-utils (new model fields add columns, a
changed scalar type retypes its column); reads and writes on the hot path use plain
``sqlite3`` statements whose SQL is built once per table. Every name that reaches SQL comes
from the model (never from data) and is checked by
:func:`~nexus_store._database.validate_identifier`.

What is stored of an item is its ``model_dump(mode="json")``: fields excluded from
serialization and extra fields of ``extra="allow"`` models are not kept in the table
(extras do travel in the queued payload).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, PydanticUndefined

from . import _codec
from ._database import Database, quote_identifier
from ._exceptions import (
    CodecError,
    CorruptDatabaseError,
    ItemValidationError,
    MigrationError,
    SchemaError,
)
from ._gc import collector_paused
from ._offsets import clock_fields, inexact_offset
from ._tablespec import (
    _BOOKKEEPING_TYPES,
    ColumnKind,
    ItemKey,
    Migration,
    PreparedItem,
    T,
    TableSpec,
    order_by_sql,
    plan_migration,
)

__all__ = ["LocalTable"]

# One encoder, reused: json.dumps() with options builds a new encoder on every call.
_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _default_json(model: type[BaseModel], name: str) -> tuple[bool, Any]:
    """Return ``(has_default, json_value)`` for a field, for back-filling a new column."""
    info = model.model_fields[name]
    if info.default is PydanticUndefined and info.default_factory is None:
        return False, None
    value = info.get_default(call_default_factory=True, validated_data={})
    annotation: Any = info.annotation
    return True, TypeAdapter(annotation).dump_python(value, mode="json")


def _nulled_number(raw: object, dumped: object) -> bool:
    """Whether the JSON form ``dumped`` of ``raw`` holds ``None`` for an infinite or NaN
    float of ``raw`` (pydantic's JSON form writes such a number as ``null`` where the type
    is ``Any``)."""
    stack: list[tuple[object, object]] = [(raw, dumped)]
    while stack:
        value, out = stack.pop()
        kind = type(value)
        if kind is float:
            if out is None and not math.isfinite(value):  # type: ignore[arg-type]
                return True
        elif kind is str or kind is int or kind is bool or value is None:
            continue
        elif isinstance(value, BaseModel):
            if type(out) is dict:
                stack.extend((v, out[k]) for k, v in value.__dict__.items() if k in out)
        elif isinstance(value, Mapping):
            if type(out) is dict:
                stack.extend((v, out[k]) for k, v in value.items() if k in out)
        elif isinstance(value, list | tuple) and type(out) is list and len(out) == len(value):
            stack.extend(zip(value, out, strict=True))
    return False


class LocalTable(Generic[T]):
    """One collection's table: convert items to rows and back, read and write them.

    Methods that write take the connection of a transaction the caller opened with
    :meth:`Database.transaction`, so the row commits together with its queue op.

    Args:
        database: the shared database.
        spec: the table layout.
    """

    def __init__(self, database: Database, spec: TableSpec) -> None:
        self.db = database
        self.spec = spec
        self.model: type[T] = spec.model  # type: ignore[assignment]
        self._fields = spec.fields
        self._kinds = [spec.kinds[name] for name in self._fields]
        self._json_index = [i for i, k in enumerate(self._kinds) if k is ColumnKind.JSON]
        self._clock_fields = clock_fields(self.model)
        self._bool_index = [i for i, k in enumerate(self._kinds) if k is ColumnKind.BOOLEAN]
        self._real_index = [i for i, k in enumerate(self._kinds) if k is ColumnKind.REAL]
        self._id_pos = self._fields.index(spec.id_field)
        # Derived, so never validated from stored data (a model that forbids extra
        # fields would refuse its own dump otherwise).
        self.computed = frozenset(self.model.model_computed_fields)
        self.stored_keys = frozenset(self.model.model_fields) | self.computed
        """The keys the stored form of an item of this model may hold."""
        self._by_name: bool | None = (
            True
            if any(f.alias or f.validation_alias for f in self.model.model_fields.values())
            else None
        )
        id_annotation: Any = self.model.model_fields[spec.id_field].annotation
        self._id_adapter: TypeAdapter[Any] = TypeAdapter(id_annotation)
        table = quote_identifier(spec.table)
        cols = [quote_identifier(n) for n in self._fields]
        idq = quote_identifier(spec.id_field)
        self._table_sql = table
        self._id_sql = idq
        self._select_cols = ", ".join(cols)
        placeholders = ", ".join("?" for _ in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != idq)
        # One statement writes the row and returns the stored server version, which the
        # queue op records as the version the write was based on.
        self._upsert_sql = (
            f"INSERT INTO {table} ({', '.join(cols)}, _nx_deleted, _nx_hlc, _nx_updated_at) "
            f"VALUES ({placeholders}, 0, ?, ?) ON CONFLICT({idq}) DO UPDATE SET "
            f"{updates + ', ' if updates else ''}_nx_deleted = 0, _nx_hlc = excluded._nx_hlc, "
            "_nx_updated_at = excluded._nx_updated_at RETURNING _nx_version"
        )
        self._remote_upsert_sql = (
            f"INSERT INTO {table} ({', '.join(cols)}, _nx_version, _nx_deleted, _nx_hlc, "
            f"_nx_updated_at) VALUES ({placeholders}, ?, 0, ?, ?) ON CONFLICT({idq}) DO UPDATE "
            f"SET {updates + ', ' if updates else ''}_nx_version = excluded._nx_version, "
            "_nx_deleted = 0, _nx_hlc = excluded._nx_hlc, _nx_updated_at = excluded._nx_updated_at"
        )
        self._tombstone_sql = (
            f"UPDATE {table} SET _nx_deleted = 1, _nx_hlc = ?, _nx_updated_at = ? "
            f"WHERE {idq} = ? AND _nx_deleted = 0 RETURNING _nx_version"
        )
        self._remote_tombstone_sql = (
            f"INSERT INTO {table} ({idq}, _nx_version, _nx_deleted, _nx_hlc, _nx_updated_at) "
            f"VALUES (?, ?, 1, ?, ?) ON CONFLICT({idq}) DO UPDATE SET "
            "_nx_version = excluded._nx_version, _nx_deleted = 1, _nx_hlc = excluded._nx_hlc, "
            "_nx_updated_at = excluded._nx_updated_at"
        )
        self._get_sql = (
            f"SELECT {self._select_cols} FROM {table} WHERE {idq} = ? AND _nx_deleted = 0"
        )
        self._version_sql = f"SELECT _nx_version FROM {table} WHERE {idq} = ?"
        self._versions_sql = (
            f"SELECT {idq}, _nx_version FROM {table} "
            f"WHERE {idq} IN (SELECT value FROM json_each(?))"
        )
        self._ack_sql = f"UPDATE {table} SET _nx_version = ? WHERE {idq} = ? AND _nx_version < ?"

    # -- schema --------------------------------------------------------------------------

    def ensure_schema(self, conn: sqlite3.Connection, *, migrating: bool = False) -> Migration:
        """Create the table, or add/retype columns for a changed model (inside a transaction).

        Args:
            migrating: migration steps will rewrite the rows next (in this transaction), so a
                new required field without a default is theirs to fill; the rows they
                produce are validated against the model.

        Raises:
            SchemaError: the table exists with another primary key, or a new required
                field has no default while the table holds items (and no steps run).
        """
        spec = self.spec
        table = self.db.utils.table(spec.table)
        if not table.exists():
            table.create(
                spec.column_types,
                pk=spec.id_field,
                not_null={spec.id_field, "_nx_version", "_nx_deleted"},
                defaults={"_nx_version": 0, "_nx_deleted": 0},
            )
            return Migration(add={}, retype={})
        pks = table.pks
        if pks != [spec.id_field]:
            raise SchemaError(
                f"table {spec.table!r} exists with primary key {pks!r}, "
                f"but the model's id field is {spec.id_field!r}"
            )
        existing = {c.name: c.type for c in table.columns}
        plan = plan_migration(existing, spec.column_types)
        if not plan:
            return plan
        has_items = conn.execute(
            f"SELECT EXISTS(SELECT 1 FROM {self._table_sql} WHERE _nx_deleted = 0)"
            if "_nx_deleted" in existing
            else f"SELECT EXISTS(SELECT 1 FROM {self._table_sql})"
        ).fetchone()[0]
        for name, sql_type in plan.add.items():
            if name in _BOOKKEEPING_TYPES:
                default = 0 if sql_type == "INTEGER" else None
                table.add_column(name, sql_type, not_null_default=default)
                continue
            has_default, value = _default_json(self.model, name)
            if has_items and not has_default and not migrating:
                raise SchemaError(
                    f"{self.model.__name__}.{name} is a new required field but table "
                    f"{spec.table!r} already holds items: give the field a default"
                )
            table.add_column(name, sql_type)
            if has_items and value is not None:
                stored = self._encode_value(spec.kinds[name], value)
                conn.execute(
                    f"UPDATE {self._table_sql} SET {quote_identifier(name)} = ?", (stored,)
                )
        if plan.retype:
            table.transform(types=plan.retype)
        return plan

    # -- conversion ----------------------------------------------------------------------

    @staticmethod
    def _encode_value(kind: ColumnKind, value: Any) -> Any:
        if value is None:
            return None
        if kind is ColumnKind.JSON:
            return _json_encode(value)
        return value

    def _check_offsets(self, validated: BaseModel) -> None:
        odd = inexact_offset(getattr(validated, name) for name in self._clock_fields)
        if odd is not None:
            raise ItemValidationError(
                f"cannot store {self.model.__name__} exactly: {odd!r} has a UTC offset of "
                f"{odd.utcoffset()}, and the stored JSON form keeps whole minutes only "
                "(convert it to UTC, or to a zone of whole-minute offsets, first)"
            )

    def from_stored(self, data: Mapping[str, Any]) -> T:
        """Validate ``data`` of the stored form: field names and JSON values (ISO dates,
        strings for UUIDs...), as rows, pulled changes and migrated records hold it. So it
        is lax even for a strict model (only lax validation takes the JSON form), by field
        name even for a model with aliases, and computed fields (a model's dump holds them)
        are left out.

        Raises:
            ValidationError: the data does not fit the model.
        """
        if self.computed and not self.computed.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in self.computed}
        return self.model.model_validate(data, strict=False, by_name=self._by_name)

    def prepare(self, item: object, *, validated: bool = False) -> PreparedItem[T]:
        """Validate an item and convert it to column values and a queue payload.

        Every way an item can fail to become a row and a payload is reported the same way:
        invalid values, values pydantic cannot serialize (``bytes`` that are not UTF-8
        under the default ``ser_json_bytes="utf8"``, nesting deeper than pydantic or the
        codec allow, circular references, errors raised by the model's own validators and
        serializers), NaN in a float column (SQLite would store it as NULL), an id that is
        not a string or integer, or a value the codec cannot encode.

        Args:
            item: the item.
            validated: the caller built ``item`` by validation just now (e.g.
                :meth:`from_stored`), so it is not validated again.

        Raises:
            ItemValidationError: the item cannot be stored; nothing was written.
        """
        model = self.model
        if not isinstance(item, model):
            raise ItemValidationError(
                f"expected a {model.__name__} item, got {type(item).__name__}"
            )
        try:
            checked = item if validated else self._revalidated(item)
            # Field names, not aliases, whatever the model's serialization settings.
            data = checked.model_dump(mode="json", by_alias=False)
            values = [data[name] for name in self._fields]
            for i in self._json_index:
                if values[i] is not None:
                    values[i] = _json_encode(values[i])
            payload = _codec.encode(data)
        except ValidationError as exc:
            raise ItemValidationError(f"invalid {model.__name__}: {exc}") from exc
        except PydanticSerializationError as exc:
            raise ItemValidationError(f"cannot serialize {model.__name__}: {exc}") from exc
        except CodecError as exc:
            raise ItemValidationError(f"cannot encode {model.__name__}: {exc}") from exc
        except UnicodeError as exc:
            raise ItemValidationError(
                f"cannot serialize {model.__name__}: {exc} (bytes fields hold UTF-8 text unless "
                'the model sets ser_json_bytes="base64")'
            ) from exc
        except Exception as exc:  # a model's own validator or serializer may raise anything
            raise ItemValidationError(
                f"cannot validate or serialize {model.__name__}: {type(exc).__name__}: {exc}"
            ) from exc
        self._check_values(checked, values, data, from_app=not validated)
        key = values[self._id_pos]
        if type(key) is not str and type(key) is not int:
            raise ItemValidationError(f"{model.__name__} id {key!r} is not a string or integer")
        return PreparedItem(checked, key, values, payload)

    def _check_values(
        self, item: T, values: list[Any], data: dict[str, Any], *, from_app: bool
    ) -> None:
        """What validation lets through but a row cannot keep.

        Raises:
            ItemValidationError: attributes that are not fields (of an app's item: they
                would be lost), an inexact clock offset, NaN in a float column, an infinite
                or NaN number where the model takes any value (its dump writes ``null``).
        """
        model = self.model
        for i in self._json_index:
            # Only a JSON value written with a null can have lost a number.
            name = self._fields[i]
            text = values[i]
            if (
                text is not None
                and "null" in text
                and _nulled_number(getattr(item, name), data[name])
            ):
                raise ItemValidationError(
                    f"{model.__name__}.{name} holds an infinite or NaN number where the model "
                    "takes any value, which its JSON form writes as null (it would read back as "
                    "None): give that value a float type, or store the number as text"
                )
        if from_app and item.__pydantic_extra__:
            names = ", ".join(sorted(item.__pydantic_extra__))
            raise ItemValidationError(
                f"{model.__name__} has attributes that are not fields ({names}): a store keeps "
                "the model's fields only, so they would be lost; declare them as fields"
            )
        if self._clock_fields:
            self._check_offsets(item)
        for i in self._real_index:
            value = values[i]
            if value is not None and value != value:  # noqa: PLR0124 - NaN is not equal to itself
                raise ItemValidationError(
                    f"{model.__name__}.{self._fields[i]} is NaN, which SQLite cannot store "
                    "(it would read back as NULL)"
                )

    def _revalidated(self, item: T) -> T:
        """``item`` validated again: a model instance can hold invalid values after plain
        attribute assignment or ``model_construct()``."""
        extra = item.__pydantic_extra__
        source = {**item.__dict__, **extra} if extra else item.__dict__
        return self.model.model_validate(source, by_name=self._by_name)

    def key_of(self, item_id: object) -> tuple[Any, ItemKey]:
        """Validate an id against the id field's type; return it and its stored form.

        Raises:
            ItemValidationError: the id does not fit the id field.
        """
        try:
            value = self._id_adapter.validate_python(item_id)
            key = self._id_adapter.dump_python(value, mode="json")
        except (ValidationError, PydanticSerializationError) as exc:
            raise ItemValidationError(
                f"{item_id!r} is not a valid {self.model.__name__}.{self.spec.id_field}: {exc}"
            ) from exc
        if type(key) is not str and type(key) is not int:
            raise ItemValidationError(f"{item_id!r} is not a string or integer id")
        if type(key) is str and not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError as exc:
                raise ItemValidationError(f"{item_id!r} is not valid text: {exc}") from exc
        return value, key

    def decode_row(self, row: Sequence[Any]) -> T:
        """Build the model from a row of :attr:`TableSpec.fields` columns.

        Raises:
            CorruptDatabaseError: a stored value breaks the table's layout (JSON that does
                not parse, a value of the wrong type for its column), or the row no longer
                fits the model; the message names the table and the row.
        """
        data: dict[str, Any] = dict(zip(self._fields, row, strict=True))
        name = ""
        try:
            for i in self._json_index:
                name = self._fields[i]
                if data[name] is not None:
                    data[name] = json.loads(data[name])
            for i in self._bool_index:
                name = self._fields[i]
                if data[name] is not None:
                    value = data[name]
                    if value not in (0, 1) or type(value) is not int:
                        raise ValueError(f"{value!r:.40} is not a stored boolean")
                    data[name] = bool(value)
        except (ValueError, TypeError, RecursionError) as exc:
            raise self.corrupt_row(row, f"{name}: {exc}") from None
        try:
            # Stored values are the JSON form (ISO dates, strings for UUIDs...), which only
            # lax validation accepts for strict models.
            return self.from_stored(data)
        except ValidationError as exc:
            raise self.corrupt_row(
                row,
                f"it no longer fits {self.model.__name__} (damaged, or written for "
                f"another version of the model without a migration): {exc}",
            ) from None

    def corrupt_row(self, row: Sequence[Any], what: str) -> CorruptDatabaseError:
        """The error for a stored row of this table that cannot be read back."""
        key = row[self._id_pos] if len(row) > self._id_pos else "?"
        return CorruptDatabaseError(
            f"{self.db.path}: table {self.spec.table!r}, row {self.spec.id_field}={key!r:.60}: "
            f"{what}"
        )

    def migrate_rows(
        self,
        conn: sqlite3.Connection,
        columns: Sequence[str],
        kinds: Mapping[str, str],
        upgrade: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> int:
        """Rewrite every live row through ``upgrade`` (inside the caller's transaction).

        Args:
            columns: the table's columns before this open (new ones are left out of what
                ``upgrade`` sees: their back-filled defaults are not old data).
            kinds: how each of those columns was stored (``"json"``, ``"boolean"``...).
            upgrade: old record (a dict) to new record.

        Returns:
            How many rows were rewritten.

        Raises:
            MigrationError: ``upgrade`` failed for a row, changed its id, or its result does
                not fit the model (the row is named).
        """
        fields = [c for c in columns if c not in _BOOKKEEPING_TYPES]
        if self.spec.id_field not in fields:
            return 0
        table = self._table_sql
        select = ", ".join(quote_identifier(c) for c in fields)
        rows = conn.execute(f"SELECT {select} FROM {table} WHERE _nx_deleted = 0").fetchall()
        id_pos = fields.index(self.spec.id_field)
        sets = ", ".join(f"{quote_identifier(c)} = ?" for c in self._fields)
        update = f"UPDATE {table} SET {sets} WHERE {self._id_sql} = ?"
        for row in rows:
            key = row[id_pos]
            where = f"table {self.spec.table!r}, row {self.spec.id_field}={key!r:.60}"
            old: dict[str, Any] = {}
            for name, stored in zip(fields, row, strict=True):
                kind = kinds.get(name)
                value = stored
                if stored is not None and kind == "json":
                    try:
                        value = json.loads(stored)
                    except (TypeError, ValueError) as exc:
                        raise CorruptDatabaseError(f"{where}: {name}: {exc}") from None
                elif stored is not None and kind == "boolean":
                    value = bool(stored)
                old[name] = value
            try:
                prepared = self.prepare(self.from_stored(upgrade(old)), validated=True)
            except MigrationError as exc:
                raise MigrationError(f"{where}: {exc}") from exc
            except (ValidationError, ItemValidationError) as exc:
                raise MigrationError(
                    f"{where}: the migrated record does not fit {self.model.__name__}: {exc}"
                ) from exc
            if prepared.key != key:
                raise MigrationError(f"{where}: a migration step changed the id")
            conn.execute(update, (*prepared.values, key))
        return len(rows)

    # -- writes (inside the caller's transaction) ----------------------------------------

    def write(
        self, conn: sqlite3.Connection, prepared: PreparedItem[T], hlc: str, now: float
    ) -> int:
        """Upsert a local write; return the row's stored server version.

        Raises:
            ItemValidationError: an integer too large for SQLite (the caller's transaction
                rolls back).
        """
        try:
            row = conn.execute(self._upsert_sql, (*prepared.values, hlc, now)).fetchone()
        except OverflowError as exc:
            raise ItemValidationError(f"a {self.model.__name__} value is too large: {exc}") from exc
        except UnicodeEncodeError as exc:
            raise ItemValidationError(f"a {self.model.__name__} value is not text: {exc}") from exc
        return int(row[0])

    def tombstone(self, conn: sqlite3.Connection, key: ItemKey, hlc: str, now: float) -> int | None:
        """Mark a live item deleted; return its server version, or None if there was none."""
        row = conn.execute(self._tombstone_sql, (hlc, now, key)).fetchone()
        return None if row is None else int(row[0])

    def write_remote(
        self,
        conn: sqlite3.Connection,
        prepared: PreparedItem[T],
        version: int,
        hlc: str | None,
        now: float,
    ) -> None:
        """Upsert an item pulled from the server at ``version``."""
        try:
            conn.execute(self._remote_upsert_sql, (*prepared.values, version, hlc, now))
        except OverflowError as exc:
            raise ItemValidationError(f"a {self.model.__name__} value is too large: {exc}") from exc

    def tombstone_remote(
        self, conn: sqlite3.Connection, key: ItemKey, version: int, hlc: str | None, now: float
    ) -> None:
        """Record a deletion pulled from the server (a tombstone row even if unseen before)."""
        conn.execute(self._remote_tombstone_sql, (key, version, hlc, now))

    def stored_version(self, conn: sqlite3.Connection, key: ItemKey) -> int | None:
        """The server version stored for ``key`` (tombstones included), None if no row."""
        row = conn.execute(self._version_sql, (key,)).fetchone()
        return None if row is None else self._server_version(key, row[0])

    def stored_versions(
        self, conn: sqlite3.Connection, keys: Sequence[ItemKey]
    ) -> dict[ItemKey, int]:
        """:meth:`stored_version` of many keys in one query: the keys that have a row."""
        if not keys:
            return {}
        rows = conn.execute(self._versions_sql, (_json_encode(list(keys)),)).fetchall()
        return {key: self._server_version(key, version) for key, version in rows}

    def _server_version(self, key: ItemKey, value: object) -> int:
        """A stored ``_nx_version``, checked.

        Raises:
            CorruptDatabaseError: it is not a server version (the file is damaged).
        """
        if type(value) is not int or value < 0:
            raise CorruptDatabaseError(
                f"{self.db.path}: table {self.spec.table!r}, row {self.spec.id_field}={key!r:.60}: "
                f"_nx_version={value!r:.40} is not a server version"
            )
        return value

    def set_server_version(self, conn: sqlite3.Connection, key: ItemKey, version: int) -> bool:
        """Raise the stored server version to ``version``; False if no row or already newer."""
        return conn.execute(self._ack_sql, (version, key, version)).rowcount > 0

    def set_server_versions(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[int, ItemKey, int]]
    ) -> int:
        """:meth:`set_server_version` for ``(version, key, version)`` rows; how many moved."""
        return conn.executemany(self._ack_sql, rows).rowcount

    # -- reads ---------------------------------------------------------------------------

    def get(self, conn: sqlite3.Connection, key: ItemKey) -> T | None:
        """The live item with this id, or None (absent or deleted)."""
        row = conn.execute(self._get_sql, (key,)).fetchone()
        return None if row is None else self.decode_row(row)

    def get_rows(self, conn: sqlite3.Connection, keys: Sequence[ItemKey]) -> dict[ItemKey, T]:
        """The live items among ``keys``, keyed by stored id."""
        found: dict[ItemKey, T] = {}
        chunk = 500  # well under SQLite's bound-parameter limit
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            sql = (
                f"SELECT {self._select_cols} FROM {self._table_sql} WHERE _nx_deleted = 0 "
                f"AND {self._id_sql} IN ({', '.join('?' for _ in part)})"
            )
            with collector_paused():
                for row in conn.execute(sql, part):
                    found[row[self._id_pos]] = self.decode_row(row)
        return found

    def select_sql(
        self,
        what: str,
        where: str | None,
        order_by: str | Sequence[str] | None,
        limit: int | None,
        offset: int | None,
    ) -> str:
        """Build a SELECT over live rows with an optional caller's WHERE fragment."""
        sql = f"SELECT {what} FROM {self._table_sql} WHERE _nx_deleted = 0"
        if where is not None and where.strip():
            sql += f" AND ({where})"
        if order_by is not None:
            sql += f" ORDER BY {order_by_sql(order_by, self._fields)}"
        elif what != "count(*)":
            sql += f" ORDER BY {self._id_sql}"
        if limit is not None or offset is not None:
            for name, value in (("limit", limit), ("offset", offset)):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0
                ):
                    raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
            sql += f" LIMIT {-1 if limit is None else limit}"
            if offset is not None:
                sql += f" OFFSET {offset}"
        return sql

    def query(
        self,
        conn: sqlite3.Connection,
        where: str | None,
        params: Sequence[Any] | Mapping[str, Any] | None,
        *,
        order_by: str | Sequence[str] | None,
        limit: int | None,
        offset: int | None,
    ) -> list[T]:
        """Live items matching ``where`` (an SQL fragment with placeholders)."""
        sql = self.select_sql(self._select_cols, where, order_by, limit, offset)
        rows = conn.execute(sql, params if params is not None else ()).fetchall()
        with collector_paused():  # thousands of records at once, maybe
            return [self.decode_row(row) for row in rows]

    def count(
        self,
        conn: sqlite3.Connection,
        where: str | None,
        params: Sequence[Any] | Mapping[str, Any] | None,
    ) -> int:
        """How many live items match ``where``."""
        sql = self.select_sql("count(*)", where, None, None, None)
        return int(conn.execute(sql, params if params is not None else ()).fetchone()[0])

    def keys(self, conn: sqlite3.Connection, *, deleted: bool = False) -> list[ItemKey]:
        """Every stored id (live ones, or tombstones with ``deleted=True``)."""
        sql = f"SELECT {self._id_sql} FROM {self._table_sql} WHERE _nx_deleted = ?"
        return [row[0] for row in conn.execute(sql, (1 if deleted else 0,))]
