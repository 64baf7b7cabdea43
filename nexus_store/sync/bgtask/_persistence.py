"""The BGTask-like scheduler's tables (``nx_bg_*``): pending requests, launches, state.

Pending requests, the force-quit flag, when the app was last opened and the launch
history live in the store's SQLite file, so a restart keeps them; a launch that was
running when the process ended is recorded as interrupted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from ..._database import Database
from ..._exceptions import NexusStoreError
from ._handle import LaunchRecord
from ._requests import BGTaskRequest, RequestKind, request_from_dict, request_to_dict

logger = logging.getLogger(__name__)

__all__: list[str] = []

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_bg_requests (
        identifier TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        submitted_at REAL NOT NULL,
        body TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nx_bg_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        identifier TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        duration REAL,
        success INTEGER,
        message TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS nx_bg_history_started ON nx_bg_history (started_at)",
    "CREATE TABLE IF NOT EXISTS nx_bg_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_INTERRUPTED = "interrupted: the process ended before the task finished"
_HISTORY_COLUMNS = "id, identifier, kind, started_at, ended_at, duration, success, message"


def _row_to_record(row: tuple[Any, ...]) -> LaunchRecord:
    rid, ident, kind, started, ended, duration, success, message = row
    return LaunchRecord(
        id=rid,
        identifier=ident,
        kind=RequestKind(kind),
        started_at=started,
        ended_at=ended,
        duration=duration,
        success=None if success is None else bool(success),
        message=message,
    )


class _Tables:
    """The scheduler's rows: pending requests, launch history, a little state."""

    def __init__(self, database: Database, history_limit: int) -> None:
        self.db = database
        self.history_limit = history_limit
        with database.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def load_pending(self) -> list[tuple[int, BGTaskRequest]]:
        rows = self.db.execute("SELECT seq, body FROM nx_bg_requests ORDER BY seq")
        loaded: list[tuple[int, BGTaskRequest]] = []
        for seq, body in rows:
            try:
                loaded.append((int(seq), request_from_dict(json.loads(body))))
            except (NexusStoreError, ValueError):
                logger.warning("dropping an unreadable stored BGTask request: %r", body)
        return loaded

    def save_pending(self, request: BGTaskRequest, seq: int, submitted_at: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO nx_bg_requests (identifier, kind, seq, submitted_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    request.identifier,
                    request.kind.value,
                    seq,
                    submitted_at,
                    json.dumps(request_to_dict(request)),
                ),
            )

    def delete_pending(self, identifiers: Iterable[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM nx_bg_requests WHERE identifier = ?", [(i,) for i in identifiers]
            )

    def start_launch(self, request: BGTaskRequest, started_at: float) -> int:
        """Remove the pending request and open a history row, in one transaction (BG-6)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM nx_bg_requests WHERE identifier = ?", (request.identifier,))
            cursor = conn.execute(
                "INSERT INTO nx_bg_history (identifier, kind, started_at) VALUES (?, ?, ?)",
                (request.identifier, request.kind.value, started_at),
            )
            rid = int(cursor.lastrowid or 0)
            conn.execute("DELETE FROM nx_bg_history WHERE id <= ?", (rid - self.history_limit,))
        return rid

    def finish_launch(self, record: LaunchRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE nx_bg_history SET ended_at = ?, duration = ?, success = ?, message = ?"
                " WHERE id = ?",
                (record.ended_at, record.duration, record.success, record.message, record.id),
            )

    def recover_interrupted(self) -> int:
        """Close the rows of launches that were running when a process died."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE nx_bg_history SET success = 0, message = ? WHERE success IS NULL",
                (_INTERRUPTED,),
            )
            return cursor.rowcount

    def history(self, identifier: str | None, limit: int) -> list[LaunchRecord]:
        where, params = (
            ("WHERE identifier = ?", (identifier, limit)) if identifier else ("", (limit,))
        )
        rows = self.db.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM nx_bg_history {where} ORDER BY id DESC LIMIT ?",
            params,
        )
        return [_row_to_record(tuple(row)) for row in rows]

    def launch_times_since(self, since: float) -> list[float]:
        rows = self.db.execute(
            "SELECT started_at FROM nx_bg_history WHERE started_at >= ? ORDER BY started_at",
            (since,),
        )
        return [float(row[0]) for row in rows]

    def get_state(self, key: str) -> str | None:
        rows = self.db.execute("SELECT value FROM nx_bg_state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_state(self, key: str, value: str | None) -> None:
        with self.db.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM nx_bg_state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO nx_bg_state (key, value) VALUES (?, ?)", (key, value)
                )
