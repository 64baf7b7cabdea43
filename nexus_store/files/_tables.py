"""The files' tables in the store's own SQLite file.

- ``nx_blobs``: every blob this file knows (by SHA-256): its size and type, whether a local
  copy exists (and whether it is a hard link to an app's file, with the size, mtime and
  inode it had when taken), whether the server has it, when it was last used (LRU).
- ``nx_attachments``: which items have which blobs attached (with the name and type given).
- ``nx_uploads``: each ``store.upload()`` call: its source's name, where it goes, its tag,
  and how it ended (queued, done, dead, cancelled).
- ``nx_transfers``: the resume point of each transfer op (the server's upload id and the
  last offset it acknowledged), so a restarted process goes on where the last one stopped.
- ``nx_blob_holds``: record ops held back until the blobs they refer to are on the server.

The transfer ops themselves live in the sync queue, collection :data:`FILES_COLLECTION`.
"""

from __future__ import annotations

import sqlite3

__all__ = ["FILES_COLLECTION", "create_tables", "has_tables"]

FILES_COLLECTION = "nx_files"
"""The queue collection of transfer ops (a reserved name: no store can be called so)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        content_type TEXT,
        local INTEGER NOT NULL,
        remote INTEGER NOT NULL,
        linked INTEGER NOT NULL,
        mtime_ns INTEGER,
        inode INTEGER,
        last_used REAL NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nx_blobs_lru ON nx_blobs (last_used) WHERE local = 1",
    """CREATE TABLE IF NOT EXISTS nx_attachments (
        collection TEXT NOT NULL,
        item_id NOT NULL,
        sha256 TEXT NOT NULL,
        name TEXT,
        content_type TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (collection, item_id, sha256)
    )""",
    "CREATE INDEX IF NOT EXISTS nx_attachments_blob ON nx_attachments (sha256)",
    """CREATE TABLE IF NOT EXISTS nx_uploads (
        upload_id TEXT PRIMARY KEY,
        op_key TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        name TEXT,
        url TEXT,
        tag TEXT,
        state TEXT NOT NULL,
        error TEXT,
        created_at REAL NOT NULL,
        done_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS nx_uploads_op ON nx_uploads (op_key)",
    "CREATE INDEX IF NOT EXISTS nx_uploads_tag ON nx_uploads (tag)",
    """CREATE TABLE IF NOT EXISTS nx_transfers (
        op_key TEXT PRIMARY KEY,
        upload_id TEXT,
        acked INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nx_blob_holds (
        op_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        token INTEGER NOT NULL,
        PRIMARY KEY (op_id, sha256)
    )""",
    "CREATE INDEX IF NOT EXISTS nx_blob_holds_blob ON nx_blob_holds (sha256)",
)

_HAS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_blobs'"


def create_tables(conn: sqlite3.Connection) -> None:
    """Create the files' tables if missing (in the caller's transaction)."""
    for statement in _SCHEMA:
        conn.execute(statement)


def has_tables(conn: sqlite3.Connection) -> bool:
    """Whether this file ever held a blob (its files' tables exist)."""
    return conn.execute(_HAS).fetchone() is not None
