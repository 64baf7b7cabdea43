"""``nx_meta``: the file's own key-value table (schema versions, field kinds, import paths).

What one process records for others: the store's schema version per collection, how
each field is stored (for tools that sync the file without the model), the import path
of the migrations.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ._database import Database
from ._exceptions import CorruptDatabaseError

__all__ = ["MetaTable"]


class MetaTable:
    """A small key/value table (``nx_meta``) for per-file and per-collection settings."""

    DDL = "CREATE TABLE IF NOT EXISTS nx_meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID"

    def __init__(self, database: Database) -> None:
        self.db = database

    def ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create the table if needed (inside a transaction)."""
        conn.execute(self.DDL)

    @staticmethod
    def get(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
        """Read one value."""
        row = conn.execute("SELECT value FROM nx_meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @staticmethod
    def get_int(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
        """Read a non-negative integer (a pull cursor, a version).

        Raises:
            CorruptDatabaseError: the stored value is not one.
        """
        row = conn.execute("SELECT value FROM nx_meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        value = row[0]
        if type(value) is not int or value < 0:
            raise CorruptDatabaseError(f"nx_meta row key={key!r}: {value!r:.40} is not a count")
        return value

    @staticmethod
    def set(conn: sqlite3.Connection, key: str, value: Any) -> None:
        """Write one value."""
        conn.execute(
            "INSERT INTO nx_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
