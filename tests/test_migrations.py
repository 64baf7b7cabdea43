"""Schema migrations: declared once, found by every process, applied to local rows, queued
ops and pulled changes; an op with no path to the current version is never sent."""

from __future__ import annotations

import importlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from nexus_store import MigrationError, Migrations, NexusStore, OpState, SchemaError
from nexus_store._codec import decode
from nexus_store.backends import Change
from nexus_store.backends._http import HttpBackend
from nexus_store.testing import FakeClock, ServerProcess

_LAUNCHER = "from nexus_store.cli import main; main()"

_MODELS = """
from pydantic import BaseModel
from nexus_store import Migrations


class NoteV1(BaseModel):
    id: str
    title: str
    size: int = 0


class NoteV2(BaseModel):
    id: str
    name: str = ""
    size: int = 0
    tags: list[str] = []


class Legacy(BaseModel):
    id: str
    text: str = ""


migrations = Migrations()


@migrations.step("note", 1)
def title_to_name(data):
    data = dict(data)
    data["name"] = data.pop("title")
    data["tags"] = ["migrated"]
    return data
"""


@pytest.fixture
def models(tmp_path: Path) -> Iterator[ModuleType]:
    """A module of models and migrations that the worker subprocess can import too."""
    folder = tmp_path / "app"
    folder.mkdir()
    name = f"drift_models_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (folder / f"{name}.py").write_text(textwrap.dedent(_MODELS))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def _v1_then_v2(path: Path, models: ModuleType, count: int) -> NexusStore[Any, str]:
    clock = FakeClock()
    old = NexusStore[Any, str](path, model=models.NoteV1, collection="note", clock=clock)
    old.save_many([models.NoteV1(id=f"n{i:05d}", title=f"t{i}", size=i) for i in range(count)])
    old.close()
    return NexusStore[Any, str](
        path,
        model=models.NoteV2,
        collection="note",
        schema_version=2,
        migrations=models.migrations,
        clock=clock,
    )


def test_local_rows_are_migrated_on_open(tmp_path: Path, models: ModuleType) -> None:
    """A renamed field's value moves to its new field: no value is left in the old column."""
    store = _v1_then_v2(tmp_path / "app.db", models, 20)
    items = store.all()
    lost = [item.id for item in items if item.name != f"t{int(item.id[1:])}"]
    assert lost == []
    assert store.get("n00001") == models.NoteV2(id="n00001", name="t1", size=1, tags=["migrated"])
    # The queued v1 ops are upgraded when leased.
    leased = store.queue.lease(100, 30.0)
    assert {op.schema_version for op in leased} == {2}
    assert decode(leased[0].payload or b"")["name"] == "t0"
    store.close()
    # Opening again does not migrate again (the rows are at v2 now).
    again = NexusStore[Any, str](
        tmp_path / "app.db",
        model=models.NoteV2,
        collection="note",
        schema_version=2,
        migrations=models.migrations,
    )
    assert again.get("n00002").name == "t2"
    again.close()


def test_a_failing_step_stops_the_open_and_changes_nothing(
    tmp_path: Path, models: ModuleType
) -> None:
    """A step that raises for a row: MigrationError naming the row; the file stays at v1."""
    path = tmp_path / "app.db"
    old = NexusStore[Any, str](path, model=models.NoteV1, collection="note")
    old.save(models.NoteV1(id="bad", title="x"))
    old.close()
    broken = Migrations()
    broken.add("note", 1, lambda data: data["missing"])
    with pytest.raises(MigrationError, match="row id='bad'"):
        NexusStore[Any, str](
            path, model=models.NoteV2, collection="note", schema_version=2, migrations=broken
        )
    with NexusStore[Any, str](path, model=models.NoteV1, collection="note") as again:
        assert again.get("bad") == models.NoteV1(id="bad", title="x")


def test_an_older_model_cannot_open_newer_rows(tmp_path: Path, models: ModuleType) -> None:
    """Rows at v2 opened with the v1 model: SchemaError, nothing read wrongly."""
    _v1_then_v2(tmp_path / "app.db", models, 1).close()
    with pytest.raises(SchemaError, match="v2"):
        NexusStore[Any, str](tmp_path / "app.db", model=models.NoteV1, collection="note")


def test_pulled_changes_of_an_older_shape_are_migrated(tmp_path: Path, models: ModuleType) -> None:
    """A change pushed by a v1 client is upgraded through the steps, not dropped."""
    store = _v1_then_v2(tmp_path / "app.db", models, 0)
    old_shape = Change(
        collection="note", item_id="r1", version=1, data={"id": "r1", "title": "remote"}
    )
    assert store.apply_pulled([old_shape]).applied == [old_shape]
    assert store.get("r1").name == "remote"
    store.close()


def test_the_import_path_is_recorded_in_the_file(tmp_path: Path, models: ModuleType) -> None:
    """The store records its version and where its migrations are, for other processes."""
    store = _v1_then_v2(tmp_path / "app.db", models, 0)
    meta = dict(store.database.execute("SELECT key, value FROM nx_meta"))
    assert meta["schema_version:note"] == 2
    assert meta["migrations"] == f"{models.__name__}:migrations"
    store.close()


# -- a real worker process ------------------------------------------------------------------------


class _Worker:
    def __init__(self, db: Path, server: ServerProcess, pythonpath: Path, *args: str) -> None:
        env = {
            **os.environ,
            "NEXUS_STORE_TOKEN": "tok",
            "PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                "worker",
                "--db",
                str(db),
                "--remote",
                server.base_url,
                "--interval",
                "1",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                self.lines.put(line.rstrip())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(30)
        return code


def _wait_drained(store: NexusStore[Any, str], worker: _Worker, timeout: float) -> None:
    """Until no op of the store's file is live (bounded; the worker is another process)."""
    deadline = time.monotonic() + timeout
    while store.queue.stats().live:
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            output = []
            while not worker.lines.empty():
                output.append(worker.lines.get())
            raise AssertionError(f"not drained: {store.queue.stats()}\n" + "\n".join(output))
        time.sleep(0.05)  # another process does the work: poll its effect, bounded


async def _server_items(server: ServerProcess) -> list[Change]:
    async with HttpBackend(server.base_url, token="tok", timeout=30) as backend:
        found: list[Change] = []
        cursor = 0
        for _ in range(1000):
            page = await backend.pull(cursor, 5000)
            found += page.changes
            if not page.has_more:
                return found
            cursor = page.cursor
    raise AssertionError("pull did not finish")


def _drift(tmp_path: Path, models: ModuleType, count: int) -> None:
    path = tmp_path / "app.db"
    store = _v1_then_v2(path, models, count)
    store.save(models.NoteV2(id="fresh", name="v2 item"))
    # A collection moved to v3 with no steps: its v1 ops have no path and must not be sent.
    legacy = NexusStore[Any, str](path, model=models.Legacy, collection="legacy")
    legacy.save_many([models.Legacy(id=f"l{i}") for i in range(5)])
    legacy.close()
    NexusStore[Any, str](path, model=models.Legacy, collection="legacy", schema_version=3).close()
    with ServerProcess(f"sqlite:///{tmp_path / 'server.db'}", tokens={"tok": "t"}) as server:
        worker = _Worker(path, server, tmp_path / "app")
        try:
            _wait_drained(store, worker, timeout=120)
        finally:
            assert worker.stop() == 0
        items = anyio.run(_server_items, server)
    notes = {c.item_id: c.data for c in items if c.collection == "note"}
    assert len(notes) == count + 1
    old_shape = [key for key, data in notes.items() if data is None or "title" in data]
    lost = [
        key
        for key, data in notes.items()
        if key != "fresh" and (data or {}).get("name") != f"t{int(str(key)[1:])}"
    ]
    print(f"migration drift: {count} v1 ops, old shape sent {len(old_shape)}, lost {len(lost)}")
    assert old_shape == []
    assert lost == []
    assert not [c for c in items if c.collection == "legacy"], "an op with no path was sent"
    dead = store.queue.dead("legacy")
    assert len(dead) == 5
    assert all(
        "no migration registered for 'legacy' from schema v1" in (op.last_error or "")
        for op in dead
    )
    assert store.queue.stats("legacy").count(state=OpState.DEAD) == 5
    store.close()


def test_a_worker_upgrades_old_payloads_before_sending(tmp_path: Path, models: ModuleType) -> None:
    """200 v1 ops drained by a real worker after the app moved to v2: all sent as v2, no
    value lost; ops with no path to the current version dead-lettered, not sent."""
    _drift(tmp_path, models, 200)


@pytest.mark.slow
def test_migration_drift_2000_ops(tmp_path: Path, models: ModuleType) -> None:
    """The same with 2,000 ops."""
    _drift(tmp_path, models, 2000)


def test_a_worker_with_migrations_it_cannot_import_sends_nothing(
    tmp_path: Path, models: ModuleType
) -> None:
    """--migrations naming nothing importable, or a recorded path that no longer imports:
    exit 2 before anything is sent."""
    path = tmp_path / "app.db"
    _v1_then_v2(path, models, 3).close()
    with ServerProcess(f"sqlite:///{tmp_path / 'server.db'}", tokens={"tok": "t"}) as server:
        # The recorded module is not on this worker's path.
        worker = _Worker(path, server, tmp_path / "elsewhere")
        assert worker.proc.wait(60) == 2
        worker.stop()
        items = anyio.run(_server_items, server)
    assert items == []
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LAUNCHER,
            "worker",
            "--db",
            str(path),
            "--remote",
            "http://127.0.0.1:1",
            "--migrations",
            "no_such_module_x:migrations",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "no_such_module_x" in done.stderr
