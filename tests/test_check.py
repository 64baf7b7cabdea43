"""Damaged values read back, the check at open, and ``nexus-store check``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import CorruptDatabaseError, NexusStore, PrioritySyncQueue
from nexus_store._check import Severity, check_file
from nexus_store._database import Database
from nexus_store.cli import app
from nexus_store.testing import FakeClock


class Note(BaseModel):
    """A record with a JSON column and a flag."""

    id: str
    text: str
    tags: list[str] = []
    done: bool = False


def _file(tmp_path: Path, name: str = "app.db") -> Path:
    path = tmp_path / name
    with NexusStore[Note, str](path, model=Note, clock=FakeClock()) as store:
        store.save_many([Note(id=f"n{i}", text="t", tags=["a"]) for i in range(5)])
        store.delete("n4")
    return path


def _damage(path: Path, sql: str) -> None:
    database = Database(path)
    database.execute(sql)
    database.close()


def test_a_damaged_queue_state_is_a_corrupt_database_error_naming_the_row(tmp_path: Path) -> None:
    """'pending' with a flipped letter: CorruptDatabaseError naming nx_queue and the row."""
    path = _file(tmp_path)
    _damage(path, "UPDATE nx_queue SET state = 'pendkng' WHERE seq = 2")
    with PrioritySyncQueue(path) as queue:
        with pytest.raises(CorruptDatabaseError, match=r"nx_queue row seq=2 .*state='pendkng'"):
            queue.pending("note", "n1")
        with pytest.raises(CorruptDatabaseError, match="nx_queue"):
            queue.stats()


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE nx_queue SET attempts = 'x' WHERE seq = 1", "attempts='x'"),
        ("UPDATE nx_queue SET kind = 'upsret' WHERE seq = 1", "kind='upsret'"),
        ("UPDATE nx_queue SET payload = NULL WHERE seq = 1", "payload=None"),
        ("UPDATE nx_queue SET priority = 9 WHERE seq = 1", "priority=9"),
    ],
)
def test_queue_values_that_break_the_schema_name_the_row(
    tmp_path: Path, sql: str, match: str
) -> None:
    """Wrong types, unknown enum values, impossible chains: CorruptDatabaseError, row named."""
    path = _file(tmp_path)
    _damage(path, sql)
    with PrioritySyncQueue(path) as queue, pytest.raises(CorruptDatabaseError, match=match):
        queue.pending("note", "n0")


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE note SET tags = '[broken' WHERE id = 'n1'", "row id='n1'.*tags"),
        ("UPDATE note SET done = 7 WHERE id = 'n1'", "row id='n1'.*done"),
        ("UPDATE note SET text = NULL WHERE id = 'n1'", "row id='n1'.*no longer fits"),
    ],
)
def test_item_values_that_break_the_schema_name_table_and_row(
    tmp_path: Path, sql: str, match: str
) -> None:
    """JSON that does not parse, a boolean of 7, a missing value: table and row named."""
    path = _file(tmp_path)
    _damage(path, sql)
    with NexusStore[Note, str](path, model=Note) as store:
        with pytest.raises(CorruptDatabaseError, match=f"table 'note', {match}"):
            store.get("n1")
        with pytest.raises(CorruptDatabaseError):
            store.all()
        assert store.get("n2") is not None  # the other rows stay readable


def test_damaged_bookkeeping_and_change_log_are_corrupt_errors(tmp_path: Path) -> None:
    """A text server version, a bad pull cursor, a bad change kind: CorruptDatabaseError."""
    path = _file(tmp_path)
    with NexusStore[Note, str](path, model=Note) as store:
        stream = store.watch()
        store.save(Note(id="w", text="watched"))
        store.set_pull_cursor(3)
        store.database.execute("UPDATE note SET _nx_version = 'x' WHERE id = 'n0'")
        store.database.execute("UPDATE nx_meta SET value = 'x' WHERE key = 'pull_cursor:note'")
        store.database.execute("UPDATE nx_changes SET kind = 'upsrt'")
        with pytest.raises(CorruptDatabaseError, match="_nx_version"):
            store.stored_version("n0")
        with pytest.raises(CorruptDatabaseError, match="pull_cursor:note"):
            store.pull_cursor()
        with pytest.raises(CorruptDatabaseError, match="nx_changes row seq="):
            stream.get(timeout=1)
        stream.close()


def test_text_that_is_not_utf8_is_a_corrupt_error(tmp_path: Path) -> None:
    """Stored text with invalid UTF-8 (a flipped byte) raises CorruptDatabaseError on read."""
    path = _file(tmp_path)
    _damage(path, "UPDATE note SET text = CAST(x'ff61' AS TEXT) WHERE id = 'n1'")
    with (
        NexusStore[Note, str](path, model=Note) as store,
        pytest.raises(CorruptDatabaseError, match=r"(?i)decode to UTF-8"),
    ):
        store.get("n1")


def _flip_index_page(path: Path) -> None:
    """Damage the queue's unique head index behind SQLite's back: a file that opens fine
    but fails integrity_check."""
    database = Database(path, verify="none")
    database.execute("PRAGMA writable_schema = ON")
    database.execute(
        "UPDATE sqlite_master SET sql = replace(sql, 'WHERE chain = 0', 'WHERE chain = 9') "
        "WHERE name = 'nx_queue_head'"
    )
    database.close()


def test_a_file_failing_integrity_check_is_refused_at_open(tmp_path: Path) -> None:
    """A damaged index: opening the store raises CorruptDatabaseError (nothing is written);
    verify='none' opens it anyway, for salvage."""
    path = _file(tmp_path)
    _flip_index_page(path)
    with pytest.raises(CorruptDatabaseError, match="damaged"):
        NexusStore[Note, str](path, model=Note)
    salvage = Database(path, verify="none")
    with NexusStore[Note, str](salvage, model=Note) as store:
        assert len(store.all()) == 4
    salvage.close()


def test_the_check_at_open_runs_once_per_file_while_open(tmp_path: Path) -> None:
    """A second connection to a file this process verified and keeps open is not checked
    again; once every connection closed, the next open checks again."""
    path = _file(tmp_path)
    first = Database(path)
    _flip_index_page(path)  # damage it behind the open connection's back
    second = Database(path)  # trusted: the file was verified while it is open
    second.close()
    first.close()
    with pytest.raises(CorruptDatabaseError):
        Database(path)


def test_readonly_open_writes_nothing(tmp_path: Path) -> None:
    """A read-only Database reads, refuses writes and leaves the file's bytes alone."""
    path = _file(tmp_path)
    before = path.read_bytes()
    database = Database(path, readonly=True)
    assert database.execute("SELECT count(*) FROM note")[0][0] == 5
    with pytest.raises(Exception, match="readonly"):
        database.execute("DELETE FROM note")
    database.close()
    assert path.read_bytes() == before


# -- nexus-store check ----------------------------------------------------------------------------


def test_check_passes_a_sound_file(tmp_path: Path) -> None:
    """A sound file: exit 0, 'sound', collections and queue counted, nothing changed."""
    path = _file(tmp_path)
    before = path.read_bytes()
    result = CliRunner().invoke(app, ["check", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "the file is sound" in result.output
    assert "note (4 items)" in result.output
    assert path.read_bytes() == before
    report = check_file(path)
    assert report.ok
    assert report.ops == 5


def test_check_lists_every_broken_invariant(tmp_path: Path) -> None:
    """Bad states, bad values, ops without items, ops without a collection, stuck ops: exit 1
    with each one named."""
    path = _file(tmp_path)
    for sql in (
        "UPDATE nx_queue SET state = 'pendkng' WHERE seq = 1",
        "UPDATE note SET tags = '[broken' WHERE id = 'n2'",
        "DELETE FROM note WHERE id = 'n3'",
        "UPDATE nx_queue SET collection = 'gone' WHERE seq = 2",
        "UPDATE nx_queue SET chain = 1 WHERE seq = 3",
        "UPDATE note SET _nx_deleted = 1 WHERE id = 'n0'",
    ):
        _damage(path, sql)
    result = CliRunner().invoke(app, ["check", "--db", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    text = " | ".join(f"{f['where']}: {f['what']}" for f in report["findings"])
    assert "nx_queue seq=1: values that break the schema: state='pendkng'" in text
    assert "note id='n2': tags: JSON that does not parse" in text
    assert "which has no row" in text
    assert "collection 'gone', which has no table" in text
    assert "it would never be sent" in text
    plain = CliRunner().invoke(app, ["check", "--db", str(path)])
    assert plain.exit_code == 1
    assert "damaged or inconsistent" in plain.output


def test_check_warns_about_an_unsynced_item_without_an_op(tmp_path: Path) -> None:
    """An item never acknowledged whose op was discarded: a warning, exit 0."""
    path = _file(tmp_path)
    with PrioritySyncQueue(path) as queue:
        queue.discard([op.op_id for op in queue.pending() if op.item_id == "n1"])
    report = check_file(path)
    assert report.ok
    assert [f.severity for f in report.findings] == [Severity.WARNING]


def test_check_on_a_damaged_file(tmp_path: Path) -> None:
    """A file failing SQLite's integrity check, or not SQLite at all: exit 1, no traceback."""
    path = _file(tmp_path)
    _flip_index_page(path)
    result = CliRunner().invoke(app, ["check", "--db", str(path)])
    assert result.exit_code == 1, result.output
    assert "nx_queue_head" in result.output
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 200)
    result = CliRunner().invoke(app, ["check", "--db", str(garbage)])
    assert result.exit_code == 1
    assert "not an SQLite database" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_bad_input_exits_2(tmp_path: Path) -> None:
    """No such file, or a directory: one line on stderr, exit 2."""
    for target in (tmp_path / "missing.db", tmp_path):
        result = CliRunner().invoke(app, ["check", "--db", str(target)])
        assert result.exit_code == 2
        assert "Traceback" not in result.output
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
