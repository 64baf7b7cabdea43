"""The worker of the corruption fuzz: opens damaged copies of a store file and uses them.

Usage: ``python corruption_case.py build DIR`` writes the populated source file (and exits
without closing it, so its ``-wal`` and ``-shm`` stay); ``python corruption_case.py run``
reads case directories from stdin, one per line, and for each prints ``start N`` and then
``result N OUTCOME DETAIL``:

- ``refused``: opening raised a NexusStoreError (the damage was reported at open);
- ``reported``: opened, then a read or write raised a NexusStoreError;
- ``clean``: everything worked;
- ``untyped``: an exception outside our tree escaped (a crash in the issue's sense).

A second copy in each case directory (``truth/``) is checked with plain sqlite3
(``PRAGMA integrity_check``) first; its verdict is printed as ``truth=ok`` or
``truth=damaged``. A third copy (``raw/``) is then opened without the check at open
(``verify="none"``), so that reads and writes meet the damage themselves: there only
``untyped`` counts. The outcomes are printed as ``DEFAULT,RAW`` before the last detail.
The parent kills this process if a case takes too long (a hang) and notices if it dies (a
crash).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import traceback
from pathlib import Path

from pydantic import BaseModel

from nexus_store import NexusStore, NexusStoreError, OpState
from nexus_store._database import Database, Verify
from nexus_store.backends import Change, MemoryBackend


class Note(BaseModel):
    """A record with a list and a flag."""

    id: str
    text: str
    tags: list[str] = []
    done: bool = False


class Task(BaseModel):
    """A record with an integer id."""

    id: int
    title: str
    weight: float = 1.0


def build(folder: Path) -> None:
    """Write the source file: items, ops in every state, a change log, a cursor."""
    path = folder / "source.db"
    notes = NexusStore[Note, str](path, model=Note)
    tasks = NexusStore[Task, int](notes.database, model=Task)
    stream = notes.watch()
    notes.save_many(
        [Note(id=f"n{i}", text="x" * (i % 50), tags=["a"] * (i % 3)) for i in range(60)]
    )
    tasks.save_many([Task(id=i, title=f"t{i}", weight=i / 3) for i in range(40)])
    notes.database.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # b-trees in the main file
    leased = notes.queue.lease(10, 60.0)
    notes.queue.nack([op.op_id for op in leased[:3]], "boom")
    notes.queue.nack([op.op_id for op in leased[3:5]], "refused", kind="permanent")
    for i in range(0, 60, 7):
        notes.save(Note(id=f"n{i}", text="again", done=True))
    notes.delete("n1")
    tasks.delete(3)
    notes.apply_remote_changes(
        [
            Change(
                collection="note", item_id=f"r{i}", version=i + 1, data={"id": f"r{i}", "text": "r"}
            )
            for i in range(10)
        ]
    )
    notes.set_pull_cursor(10)
    stream.get(timeout=0)
    sys.stdout.flush()
    os._exit(0)  # keep the -wal and -shm as a running app leaves them


def _truth(folder: Path) -> str:
    try:
        conn = sqlite3.connect(folder / "truth" / "case.db")
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return "damaged"
    return "ok" if result == ["ok"] else "damaged"


def _use(path: Path, verify: Verify) -> str:
    """Open the damaged copy and use it as an app and a sync run would; the outcome."""
    try:
        database = Database(path, verify=verify)
    except NexusStoreError as exc:
        return f"refused {type(exc).__name__}: {exc}"
    try:
        notes = NexusStore[Note, str](database, model=Note)
        tasks = NexusStore[Task, int](database, model=Task)
        notes.all()
        tasks.all()
        notes.get_many([f"n{i}" for i in range(70)])
        tasks.count()
        notes.query("done = ?", [1])
        notes.queue.stats()
        notes.queue.dead()
        notes.pending(states=list(OpState))
        tasks.pending(states=list(OpState))
        notes.pull_cursor()
        stream = notes.watch(since=0)
        for _ in range(200):
            if stream.get(timeout=0) is None:
                break
        stream.close()
        notes.save(Note(id="new", text="after"))
        tasks.delete(5)
        notes.sync(backend=MemoryBackend())
        notes.close()
        tasks.close()
    except NexusStoreError as exc:
        return f"reported {type(exc).__name__}: {exc}"
    finally:
        database.close()
    return "clean -"


def run() -> None:
    """Serve cases from stdin until it closes."""
    out = sys.stdout
    for line in sys.stdin:
        number, folder = line.split(maxsplit=1)
        case = Path(folder.strip())
        out.write(f"start {number}\n")
        out.flush()
        truth = _truth(case)
        outcomes = []
        for copy, verify in (("case.db", "full"), ("raw/case.db", "none")):
            try:
                outcome = _use(case / copy, verify)  # type: ignore[arg-type]
            except Exception as exc:  # the point: anything outside our tree is a finding
                where = traceback.extract_tb(exc.__traceback__)[-1]
                outcome = f"untyped {type(exc).__name__}: {exc} at {where.filename}:{where.lineno}"
            outcomes.append(outcome.split(" ", 1)[0])
            if outcome.startswith("untyped"):
                break
        detail = " ".join(outcome.split())[:300]
        out.write(f"result {number} truth={truth} {','.join(outcomes)} {detail}\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        run()
