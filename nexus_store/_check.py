"""Checking a store file: SQLite's integrity check plus the store's own invariants.

:func:`check_file` opens a file read-only (nothing is written, not even the switch to WAL)
and reports, without stopping at the first one:

- what ``PRAGMA integrity_check`` finds (damaged pages, indexes that disagree with their
  tables);
- queue rows whose values break the schema (an unknown state, kind or priority, a payload
  that is not an encoded record, a state that disagrees with the row's place in its
  item's chain), ops waiting behind no head (they would never be sent), lease rows of no op;
- ops of a collection that has no table (in a file that has collection tables at all: a
  bare queue file has none), live ops whose item is missing or disagrees with the op (an
  upsert of a deleted item, a delete of a live one);
- item rows that cannot be read back (JSON columns that do not parse, booleans that are not
  0/1, bookkeeping values out of range);
- change-log rows of unknown kinds, pull cursors that are not counts, quarantined changes
  that do not decode.

Findings are errors (the file is damaged or inconsistent) or warnings (worth knowing, not
broken: an item written locally and never acknowledged that has no op, e.g. after its op
was discarded). The decision is in :class:`CheckReport`; the command line prints it.
"""

from __future__ import annotations

import json
import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import _codec
from ._database import Database, quote_identifier
from ._exceptions import CodecError, CorruptDatabaseError, DatabaseError
from ._quarantine import decode_kept
from .queue._records import damage_of
from .queue._schema import _TABLE_COLUMNS

__all__ = ["CheckReport", "Finding", "Severity", "check_file"]

_BOOKKEEPING = frozenset({"_nx_version", "_nx_deleted", "_nx_hlc", "_nx_updated_at"})
_MAX_FINDINGS = 1000
_PRIORITIES = frozenset({0, 1, 2, 3})
_CHANGE_KINDS = frozenset({"upsert", "delete"})
_ORIGINS = frozenset({"local", "remote"})


class Severity(StrEnum):
    """How bad a finding is."""

    ERROR = "error"
    """The file is damaged or inconsistent."""
    WARNING = "warning"
    """Worth knowing; nothing is broken."""


class Finding(BaseModel):
    """One thing :func:`check_file` found."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    where: str
    """The table and row (``nx_queue seq=12``), or ``file`` for the file as a whole."""
    what: str


class CheckReport(BaseModel):
    """What :func:`check_file` found in one file."""

    path: str
    integrity: list[str]
    """``PRAGMA integrity_check``'s answer (``["ok"]`` for a sound file)."""
    findings: list[Finding]
    """At most the first 1,000 findings (``total_findings`` counts them all)."""
    total_findings: int = 0
    collections: dict[str, int]
    """Each collection table with its count of live items."""
    ops: int = 0
    dead: int = 0
    quarantined: int = 0

    @property
    def errors(self) -> list[Finding]:
        """The findings that make the file broken."""
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def ok(self) -> bool:
        """Whether SQLite's check passed and no invariant is broken."""
        return self.integrity == ["ok"] and not self.errors


class _Collector:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.total = 0

    def add(self, severity: Severity, where: str, what: str) -> None:
        self.total += 1
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(Finding(severity=severity, where=where, what=what))

    def error(self, where: str, what: str) -> None:
        self.add(Severity.ERROR, where, what)

    def warning(self, where: str, what: str) -> None:
        self.add(Severity.WARNING, where, what)


def check_file(path: str | Path) -> CheckReport:
    """Check a store file without changing it.

    Args:
        path: the database file.

    Returns:
        The report (a file that is not SQLite at all is a report with one error).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: the path is a directory.
    """
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(f"{file} is a directory, not a database file")
    if not file.exists():
        raise FileNotFoundError(f"no database file at {file}")
    found = _Collector()
    report = CheckReport(path=str(file), integrity=[], findings=[], collections={})
    try:
        database = Database(file, readonly=True, verify="none")
    except DatabaseError as exc:
        found.error("file", str(exc))
        return _done(report, found, ["file cannot be opened"])
    try:
        with database.reading() as conn:
            try:
                integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(100)")]
            except sqlite3.DatabaseError as exc:
                found.error("file", f"SQLite cannot read the file: {exc}")
                return _done(report, found, [str(exc)])
            for problem in integrity:
                if problem != "ok":
                    found.error("file", problem)
            try:
                _check_contents(conn, report, found)
            except sqlite3.DatabaseError as exc:
                found.error("file", f"reading stopped at damage: {exc}")
    finally:
        database.close()
    return _done(report, found, integrity)


def _done(report: CheckReport, found: _Collector, integrity: list[str]) -> CheckReport:
    return report.model_copy(
        update={"integrity": integrity, "findings": found.findings, "total_findings": found.total}
    )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if isinstance(r[0], str)
    }


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, bool]]:
    """(name, is the primary key) of each column."""
    rows = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
    return [(str(r[1]), bool(r[5])) for r in rows]


def _check_contents(conn: sqlite3.Connection, report: CheckReport, found: _Collector) -> None:
    tables = _tables(conn)
    kinds = _recorded_kinds(conn, found) if "nx_meta" in tables else {}
    collections: dict[str, str] = {}  # name -> id column
    for table in sorted(tables):
        if table.startswith(("nx_", "sqlite_")):
            continue
        columns = _columns(conn, table)
        names = {name for name, _ in columns}
        keys = [name for name, pk in columns if pk]
        if names >= _BOOKKEEPING and len(keys) == 1:
            collections[table] = keys[0]
    live: dict[str, int] = {}
    for table, id_column in collections.items():
        live[table] = _check_items(conn, table, id_column, kinds.get(table, {}), found)
    report.collections.update(live)
    if "nx_queue" in tables:
        _check_queue(conn, report, collections, found, has_leases="nx_leases" in tables)
        _check_unqueued_items(conn, collections, found)
    if "nx_changes" in tables:
        _check_changes(conn, found)
    if "nx_quarantine" in tables:
        report.quarantined = _check_quarantine(conn, found)


def _recorded_kinds(conn: sqlite3.Connection, found: _Collector) -> dict[str, dict[str, str]]:
    """The column kinds each collection recorded (``columns:<name>`` in nx_meta)."""
    kinds: dict[str, dict[str, str]] = {}
    for key, value in conn.execute("SELECT key, value FROM nx_meta"):
        if not isinstance(key, str):
            found.error("nx_meta", f"a key that is not text: {key!r:.40}")
            continue
        if key.startswith("pull_cursor:") and (type(value) is not int or value < 0):
            found.error(f"nx_meta key={key!r}", f"pull cursor {value!r:.40} is not a count")
        if key.startswith("columns:"):
            try:
                decoded = json.loads(value)
            except (TypeError, ValueError) as exc:
                found.error(f"nx_meta key={key!r}", f"column kinds do not decode: {exc}")
                continue
            if not isinstance(decoded, dict):
                found.error(f"nx_meta key={key!r}", "column kinds are not a JSON object")
                continue
            kinds[key.removeprefix("columns:")] = {str(k): str(v) for k, v in decoded.items()}
    return kinds


def _check_items(
    conn: sqlite3.Connection,
    table: str,
    id_column: str,
    kinds: dict[str, str],
    found: _Collector,
) -> int:
    """Check every row of a collection table; return how many live items it holds."""
    quoted = quote_identifier(table)
    fields = [name for name, _ in _columns(conn, table) if name not in _BOOKKEEPING]
    select = ", ".join(quote_identifier(c) for c in (*fields, "_nx_version", "_nx_deleted"))
    live = 0
    for row in conn.execute(f"SELECT {select} FROM {quoted}"):
        values = dict(zip((*fields, "_nx_version", "_nx_deleted"), row, strict=True))
        where = f"{table} {id_column}={values[id_column]!r:.60}"
        key = values[id_column]
        if type(key) is not str and type(key) is not int:
            found.error(where, f"the id {key!r:.40} is not text or an integer")
        version, deleted = values["_nx_version"], values["_nx_deleted"]
        if type(version) is not int or version < 0:
            found.error(where, f"_nx_version={version!r:.40} is not a server version")
        if deleted not in (0, 1) or type(deleted) is not int:
            found.error(where, f"_nx_deleted={deleted!r:.40} is not 0 or 1")
            continue
        if deleted:
            continue
        live += 1
        for name in fields:
            problem = _field_problem(kinds.get(name), values[name])
            if problem:
                found.error(where, f"{name}: {problem}")
    return live


def _field_problem(kind: str | None, value: Any) -> str | None:
    """Why a stored value does not fit its column kind (None: it fits or is unknown)."""
    if value is None or kind is None:
        return None
    if kind == "json":
        if not isinstance(value, str):
            return f"{value!r:.40} is not JSON text"
        try:
            json.loads(value)
        except (ValueError, RecursionError) as exc:
            return f"JSON that does not parse ({exc})"
        return None
    if kind == "boolean":
        return None if type(value) is int and value in (0, 1) else f"{value!r:.40} is not 0 or 1"
    if kind == "integer":
        return None if type(value) is int else f"{value!r:.40} is not an integer"
    if kind == "real":
        return None if type(value) in (int, float) else f"{value!r:.40} is not a number"
    if kind == "text":
        return None if isinstance(value, str) else f"{value!r:.40} is not text"
    return None


class _QueueScan:
    """What one pass over nx_queue learns, row by row."""

    def __init__(self, collections: dict[str, str], found: _Collector) -> None:
        self.collections = collections
        self.found = found
        self.heads: set[tuple[str, Any]] = set()
        self.waiting: list[tuple[int, str, Any]] = []
        self.newest: dict[tuple[str, Any], tuple[int, str]] = {}
        self.seqs: set[int] = set()
        self.ops = self.dead = 0

    def row(self, row: Any) -> None:
        self.ops += 1
        seq: int = row[0]
        collection: str = row[2]
        item_id: Any = row[3]
        kind: str = row[4]
        priority: Any = row[5]
        payload: bytes = row[6]
        where = f"nx_queue seq={seq!r:.20}"
        self.seqs.add(seq)
        problems = damage_of(row)
        if priority not in _PRIORITIES or type(priority) is not int:
            problems.append(f"priority={priority!r:.20}")
        if problems:
            self.found.error(where, "values that break the schema: " + ", ".join(problems))
            return
        key = (collection, item_id)
        if row[10] == "dead":
            self.dead += 1
        else:
            self.newest[key] = (seq, kind)
            if row[11] != 0:
                self.waiting.append((seq, collection, item_id))
            elif key in self.heads:
                self.found.error(where, f"a second head for {collection}/{item_id!r:.40}")
            else:
                self.heads.add(key)
        if kind == "upsert":
            _check_payload(where, payload, self.found)
        if self.collections and collection not in self.collections:
            self.found.error(where, f"an op of collection {collection!r:.40}, which has no table")


def _check_queue(
    conn: sqlite3.Connection,
    report: CheckReport,
    collections: dict[str, str],
    found: _Collector,
    *,
    has_leases: bool,
) -> None:
    scan = _QueueScan(collections, found)
    for row in conn.execute(f"SELECT {_TABLE_COLUMNS} FROM nx_queue ORDER BY seq"):
        scan.row(row)
    for seq, collection, item_id in scan.waiting:
        if (collection, item_id) not in scan.heads:
            found.error(
                f"nx_queue seq={seq}",
                f"waits behind no head op of {collection}/{item_id!r:.40}: it would never be sent",
            )
    for (collection, item_id), (seq, kind) in scan.newest.items():
        id_column = collections.get(collection)
        if id_column is not None:
            where = f"nx_queue seq={seq}"
            problem = _op_item_problem(conn, collection, id_column, item_id, kind)
            if problem:
                found.error(where, problem)
    if has_leases:
        for (seq,) in conn.execute("SELECT seq FROM nx_leases"):
            if seq not in scan.seqs:
                found.warning(f"nx_leases seq={seq!r:.20}", "lease state of no op")
    report.ops, report.dead = scan.ops, scan.dead


def _check_payload(where: str, payload: bytes, found: _Collector) -> None:
    try:
        decoded = _codec.decode(payload)
    except CodecError as exc:
        found.error(where, f"the payload does not decode: {exc}")
        return
    if not isinstance(decoded, dict):
        found.error(where, f"the payload is a {type(decoded).__name__}, not a record")


def _op_item_problem(
    conn: sqlite3.Connection, collection: str, id_column: str, item_id: Any, kind: str
) -> str | None:
    """An item's newest live op must have its row: live for an upsert, a tombstone for a
    delete."""
    row = conn.execute(
        f"SELECT _nx_deleted FROM {quote_identifier(collection)} "
        f"WHERE {quote_identifier(id_column)} = ?",
        (item_id,),
    ).fetchone()
    if row is None:
        return f"an op of {collection}/{item_id!r:.40}, which has no row"
    if kind == "upsert" and row[0] != 0:
        return f"an upsert of {collection}/{item_id!r:.40}, which is deleted"
    if kind == "delete" and row[0] != 1:
        return f"a delete of {collection}/{item_id!r:.40}, which is not deleted"
    return None


def _check_unqueued_items(
    conn: sqlite3.Connection, collections: dict[str, str], found: _Collector
) -> None:
    """Items written locally and never acknowledged (version 0) should have an op."""
    for table, id_column in collections.items():
        idq = quote_identifier(id_column)
        rows = conn.execute(
            f"SELECT {idq} FROM {quote_identifier(table)} t WHERE _nx_version = 0 AND NOT EXISTS "
            f"(SELECT 1 FROM nx_queue q WHERE q.collection = ? AND q.item_id = t.{idq}) LIMIT 100",
            (table,),
        )
        for (key,) in rows:
            found.warning(
                f"{table} {id_column}={key!r:.60}",
                "written locally, never acknowledged by a server, and no op is queued "
                "(discarded?): it will not sync unless saved again",
            )


def _check_changes(conn: sqlite3.Connection, found: _Collector) -> None:
    for seq, kind, origin in conn.execute("SELECT seq, kind, origin FROM nx_changes"):
        if kind not in _CHANGE_KINDS or origin not in _ORIGINS:
            found.error(f"nx_changes seq={seq}", f"kind={kind!r:.20}, origin={origin!r:.20}")


def _check_quarantine(conn: sqlite3.Connection, found: _Collector) -> int:
    count = 0
    for rowid, change in conn.execute("SELECT id, change FROM nx_quarantine"):
        count += 1
        try:
            decode_kept(rowid, change)
        except CorruptDatabaseError as exc:
            found.error(f"nx_quarantine id={rowid!r:.20}", str(exc))
    return count
