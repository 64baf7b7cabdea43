"""The server's tables, one definition for SQLite and PostgreSQL.

::

    nx_meta     (key PRIMARY KEY, value)                 schema_version
    nx_tenants  (tenant PRIMARY KEY, head)               each tenant's change counter
    nx_items    (tenant, collection, item_key) PRIMARY KEY, version UNIQUE per tenant,
                deleted, data (msgpack), hlc, schema_version, writer
    nx_ops      (tenant, op_id) PRIMARY KEY, fingerprint, version | result (msgpack),
                created_at

Items hold only each item's latest state; a pull reads them by ``(tenant, version)``.
``writer`` is the id of the sync run that pushed the state (``NULL`` when it did not say):
a run's pull leaves out what that run pushed itself (echo suppression). It was added after
version 1 of the schema without a version bump (older code ignores it): :func:`ddl` adds it
to a database that lacks it.
In SQLite ``nx_items`` keeps its rowid (its rows, a few hundred bytes, are too big for a
``WITHOUT ROWID`` table to pay off: measured 25% slower), the small ``nx_*`` tables do not.
``nx_ops`` keeps every answered op id (the idempotency record); its primary key is what
makes a second effect of one op impossible even if two writers raced.
"""

from __future__ import annotations

from typing import Literal

from ..._exceptions import SchemaError

__all__ = ["ADD_WRITER", "SCHEMA_VERSION", "Dialect", "check_schema_version", "ddl"]

SCHEMA_VERSION = 1
"""Bumped when the tables change; a database from a newer version is refused."""

Dialect = Literal["sqlite", "postgresql"]

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "key": "TEXT",
        "blob": "BLOB",
        "int": "INTEGER",
        "bool": "INTEGER",
        "real": "REAL",
        "tail": " WITHOUT ROWID",
    },
    "postgresql": {
        # Keys compare bytewise: faster B-trees than a locale's collation, same everywhere.
        "key": 'TEXT COLLATE "C"',
        "blob": "BYTEA",
        "int": "BIGINT",
        "bool": "BOOLEAN",
        "real": "DOUBLE PRECISION",
        "tail": "",
    },
}

_DDL = (
    "CREATE TABLE IF NOT EXISTS nx_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL){tail}",
    "CREATE TABLE IF NOT EXISTS nx_tenants (tenant {key} PRIMARY KEY, head {int} NOT NULL){tail}",
    """CREATE TABLE IF NOT EXISTS nx_items (
        tenant {key} NOT NULL,
        collection {key} NOT NULL,
        item_key {key} NOT NULL,
        version {int} NOT NULL,
        deleted {bool} NOT NULL,
        data {blob},
        hlc TEXT NOT NULL,
        schema_version {int} NOT NULL,
        writer {int},
        PRIMARY KEY (tenant, collection, item_key)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS nx_items_by_version ON nx_items (tenant, version)",
    """CREATE TABLE IF NOT EXISTS nx_ops (
        tenant {key} NOT NULL,
        op_id {key} NOT NULL,
        fingerprint {blob} NOT NULL,
        version {int},
        result {blob},
        created_at {real} NOT NULL,
        PRIMARY KEY (tenant, op_id)
    ){tail}""",
)


ADD_WRITER: dict[Dialect, str] = {
    "sqlite": "ALTER TABLE nx_items ADD COLUMN writer INTEGER",
    "postgresql": "ALTER TABLE nx_items ADD COLUMN IF NOT EXISTS writer BIGINT",
}
"""The statement that gives a database of the first layout its ``writer`` column (SQLite
has no ``IF NOT EXISTS`` here: run it when ``PRAGMA table_info`` lacks the column)."""


def ddl(dialect: Dialect) -> list[str]:
    """The statements that create the schema if missing (safe to run again)."""
    return [statement.format(**_TYPES[dialect]) for statement in _DDL]


def check_schema_version(found: str | None) -> None:
    """Accept a database whose recorded schema version this code can use.

    Raises:
        SchemaError: the database was written by a newer, incompatible version.
    """
    if found is not None and int(found) > SCHEMA_VERSION:
        raise SchemaError(
            f"the server database has schema version {found}; this nexus-store "
            f"understands up to {SCHEMA_VERSION}: upgrade nexus-store"
        )
