"""``nexus-store queue``: counts per priority and state, dead letters, clear errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import ErrorKind, NexusStore, SyncPriority
from nexus_store.cli import app

runner = CliRunner()


class Task(BaseModel):
    """A small record."""

    id: str


def make_store(path: Path) -> None:
    """Three ops of different priorities, one of them dead-lettered with a reason."""
    with NexusStore[Task, str](path, model=Task) as store:
        store.save(Task(id="a"), priority=SyncPriority.CRITICAL)
        store.save(Task(id="b"), priority=SyncPriority.LOW)
        store.save(Task(id="c"), priority=SyncPriority.LOW)
        dead = [op.op_id for op in store.queue.lease(10) if op.item_id == "b"]
        store.queue.nack(dead, "rejected: title too long", kind=ErrorKind.PERMANENT)


def test_tables_show_counts_and_dead_letter_reasons(tmp_path: Path) -> None:
    """The table lists each priority's counts and every dead letter with its reason."""
    path = tmp_path / "app.db"
    make_store(path)
    result = runner.invoke(app, ["queue", "--db", str(path)], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    assert "CRITICAL" in result.output
    assert "rejected: title too long" in result.output
    assert "oldest pending op" in result.output


def test_json_output(tmp_path: Path) -> None:
    """--json gives the same facts in a machine-readable form."""
    path = tmp_path / "app.db"
    make_store(path)
    result = runner.invoke(app, ["queue", "--db", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["total"] == 3
    assert data["counts"]["LOW"]["dead"] == 1
    assert data["counts"]["CRITICAL"]["leased"] + data["counts"]["CRITICAL"]["pending"] == 1
    assert [d["item_id"] for d in data["dead"]] == ["b"]
    assert data["dead"][0]["reason"] == "rejected: title too long"


def test_missing_and_corrupt_files_exit_2(tmp_path: Path) -> None:
    """A missing file or a file that is not SQLite gives exit code 2 and a message."""
    missing = runner.invoke(app, ["queue", "--db", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2
    assert "no database file" in " ".join(missing.output.split())  # rich wraps long paths
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"definitely not sqlite" * 50)
    corrupt = runner.invoke(app, ["queue", "--db", str(bad)])
    assert corrupt.exit_code == 2
    assert "not an SQLite database" in " ".join(corrupt.output.split())


def test_sqlite_file_without_a_queue_exits_2_and_is_left_alone(tmp_path: Path) -> None:
    """Another program's SQLite file is reported (exit 2) and gets no queue table."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["queue", "--db", str(other)])
    assert result.exit_code == 2
    assert "no sync queue" in " ".join(result.output.split())
    conn = sqlite3.connect(other)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    conn.close()


def test_collection_filter_and_empty_dead_letters(tmp_path: Path) -> None:
    """--collection counts one collection; a queue without dead letters says so."""
    path = tmp_path / "app.db"
    with NexusStore[Task, str](path, model=Task) as store:
        store.save(Task(id="a"), priority=SyncPriority.HIGH)
    result = runner.invoke(app, ["queue", "--db", str(path), "--collection", "task"])
    assert result.exit_code == 0, result.output
    assert "dead letters: none" in result.output
    only = json.loads(
        runner.invoke(app, ["queue", "--db", str(path), "--collection", "task", "--json"]).output
    )
    assert only["counts"]["HIGH"]["pending"] == 1
    data = json.loads(
        runner.invoke(app, ["queue", "--db", str(path), "--collection", "nothing", "--json"]).output
    )
    assert data["total"] == 0
    assert data["oldest_pending_age"] is None
