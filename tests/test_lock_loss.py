"""Lock loss: nothing but SQLite opens a database file while the process holds a connection.

On POSIX, closing *any* descriptor of a file drops every lock the process holds on it; a
plain ``open()``/``close()`` of a database (to read its header, say) silently ends the WAL
locks of the process's open connections. The next process that opens and closes the file
then believes it is the last one, checkpoints and deletes the ``-wal``, and every later
commit goes to an unlinked WAL: invisible to other processes and lost at the next crash.
These tests open one file several times in one process, let other processes open and close
it, SIGKILL the writer (or the server) and count the acknowledged writes that are gone.
"""

from __future__ import annotations

import ast
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

import nexus_store
from nexus_store import NexusStore
from nexus_store._database import Database
from nexus_store.backends import RemoteOp
from nexus_store.backends._http import HttpBackend
from nexus_store.testing import ServerProcess

WRITER = Path(__file__).with_name("lockloss_writer.py")
DEADLINE = 60.0


class Note(BaseModel):
    """The writer's first model."""

    id: str
    text: str


class Task(BaseModel):
    """The writer's second model."""

    id: str
    done: bool = False


# -- the root cause, pinned directly ------------------------------------------------------------


def _other_process(path: Path, sql: str) -> str:
    """Open the file in another process, run one query, close it; return the answer."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute(sys.argv[2]).fetchone()[0]); c.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE,
    )
    return done.stdout.strip()


def test_second_open_in_one_process_keeps_the_first_connections_locks(tmp_path: Path) -> None:
    """After a second Database on the file, another process's close leaves the WAL alone."""
    path = tmp_path / "two.db"
    first = Database(path)
    first.execute("CREATE TABLE t (x INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    second = Database(path)
    assert _other_process(path, "SELECT count(*) FROM t") == "1"
    assert Path(f"{path}-wal").exists(), "another process deleted the WAL we still use"
    first.execute("INSERT INTO t VALUES (2)")
    assert _other_process(path, "SELECT count(*) FROM t") == "2", "a commit went to a lost WAL"
    second.close()
    first.close()


_ALLOWED_FILE_ACCESS = {
    # The server process's own log file, in the test kit: never a database.
    ("testing/_server.py", "read_text"),
    # The benchmark tool reads a process's own counters from /proc: never a database.
    ("bench/_drain.py", "open"),
    ("bench/_http.py", "read_text"),
    # The benchmark tool: the CPU's name from /proc, a client process's log, and the
    # --json files it writes and reads back for --compare: never a database.
    ("bench/_machine.py", "read_text"),
    ("bench/_loadrun.py", "read_text"),
    ("bench/_report.py", "write_text"),
    ("bench/_report.py", "read_text"),
    # bench server: the main process id PostgreSQL writes into postmaster.pid (a text file
    # of PostgreSQL's, not a database file of SQLite's).
    ("bench/_servers.py", "read_text"),
    # The files benchmark writes and reads its own sample files and /proc counters.
    ("bench/_files.py", "open"),
    ("bench/_files.py", "read_bytes"),
    ("bench/_files.py", "write_bytes"),
    # Blob files: copies in the store's own blob folder (named by hash), and sources the
    # app names, which LocalBlobs refuses when they are a database this process has open
    # (is_open_database_file; see test_attaching_an_open_database_file_is_refused).
    ("files/_local.py", "open"),
    ("files/_download.py", "open"),
    ("files/_tus_upload.py", "open"),
    ("files/_batches.py", "open"),  # a small blob's local copy, sent in a batch
    ("_store_files.py", "open"),  # LocalBlobs.open: a blob's local copy
    # The server's blob folder: blobs and upload records, never a database.
    ("server/blobs/_fs.py", "open"),
    ("server/blobs/_fs.py", "read_text"),
    ("server/blobs/_fs.py", "write_text"),
    # nexus-store worker install: the token's 0600 credentials file and the service
    # manager's unit, agent or task file it writes (and --token-file read back), never a
    # database.
    ("cli/_worker_install.py", "open"),
    ("cli/_worker_install.py", "fdopen"),
    ("cli/_worker_install.py", "write_bytes"),
    ("cli/_worker_install.py", "write_text"),
    ("cli/_worker_install.py", "read_text"),
}
_FILE_OPENERS = {"open", "read_bytes", "read_text", "write_bytes", "write_text", "fdopen"}


def _file_openers(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = (
            func.id
            if isinstance(func, ast.Name)
            else func.attr
            if isinstance(func, ast.Attribute)
            else ""
        )
        if name in _FILE_OPENERS:
            yield name, node.lineno


def test_the_package_opens_no_file_behind_sqlites_back() -> None:
    """No module calls open(), os.open, Path.read_bytes... (database files are SQLite's)."""
    root = Path(nexus_store.__file__).parent
    found = []
    for module in sorted(root.rglob("*.py")):
        relative = module.relative_to(root).as_posix()
        for name, line in _file_openers(module):
            if (relative, name) not in _ALLOWED_FILE_ACCESS:
                found.append(f"{relative}:{line}: {name}()")
    # Methods of our own classes named open() are not file access.
    found = [f for f in found if not f.endswith(": open()") or _is_file_open(root, f)]
    assert not found, "file access outside SQLite:\n" + "\n".join(found)


def _is_file_open(root: Path, where: str) -> bool:
    relative, line = where.split(":")[:2]
    source = (root / relative).read_text().splitlines()[int(line) - 1]
    return "await " not in source and ".open()" not in source


# -- the client: several stores on one file, other processes, SIGKILL ---------------------------


class _Lines:
    """Whole lines from a child's stdout, each wait bounded by a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buffer = b""
        self.lines: list[str] = []

    def until(self, predicate: object, deadline: float) -> None:
        """Read until ``predicate(lines)`` holds."""
        assert callable(predicate)
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while not predicate(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no progress from the writer: {self.lines[-3:]}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise AssertionError("the writer exited early")
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines += [line.decode() for line in complete]

    def drain(self) -> None:
        """After the child died: the complete lines still in the pipe."""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:  # pragma: no cover - a dead child's pipe ends in EOF
                break
            if not chunk:
                break
            self._buffer += chunk
        *complete, _ = self._buffer.split(b"\n")
        self.lines += [line.decode() for line in complete]


def _acks(lines: list[str]) -> set[tuple[str, str]]:
    return {(parts[1], parts[2]) for line in lines if (parts := line.split())[:1] == ["ack"]}


_CLI = "from nexus_store.cli import main; main()"


def _touch(path: Path, rng: random.Random) -> None:
    """What other programs do to the file: a sqlite3 shell, the queue command, a backup."""
    choice = rng.randrange(3)
    if choice == 0:
        _other_process(path, "SELECT count(*) FROM sqlite_master")
    elif choice == 1:
        subprocess.run(
            [sys.executable, "-c", _CLI, "queue", "--db", str(path), "--json"],
            capture_output=True,
            check=True,
            timeout=DEADLINE,
        )
    else:
        code = (
            "import sqlite3, sys; src = sqlite3.connect(sys.argv[1]); "
            "dst = sqlite3.connect(':memory:'); src.backup(dst); src.close()"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=DEADLINE)


def _stored(path: Path) -> set[tuple[str, str]]:
    """The items in the file, read by a fresh process (as the next run of the app would)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "rows = [('note', r[0]) for r in c.execute('SELECT id FROM note')]; "
        "rows += [('task', r[0]) for r in c.execute('SELECT id FROM task')]; "
        "ops = {(r[0], r[1]) for r in c.execute('SELECT collection, item_id FROM nx_queue')}; "
        "print('\\n'.join(f'{a} {b} {(a, b) in ops}' for a, b in rows)); c.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE,
    )
    found = set()
    for line in done.stdout.splitlines():
        collection, key, has_op = line.split()
        assert has_op == "True", f"{collection} {key} is stored without its op"
        found.add((collection, key))
    return found


def _client_rounds(tmp_path: Path, rounds: int, seed: int) -> int:
    """Rounds of: writer opens the file thrice, others touch it between saves, SIGKILL."""
    rng = random.Random(seed)
    path = tmp_path / "app.db"
    acked: set[tuple[str, str]] = set()
    for r in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), f"r{r}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        lines = _Lines(proc)
        try:
            deadline = time.monotonic() + DEADLINE
            lines.until(lambda seen: "ready" in seen, deadline)
            for _ in range(rng.randint(1, 3)):
                _touch(path, rng)
                done_before = lines.lines.count("done")
                proc.stdin.write(f"save {rng.randint(1, 10)}\n".encode())
                proc.stdin.flush()
                lines.until(lambda seen, n=done_before: seen.count("done") > n, deadline)
            _touch(path, rng)
            # Kill in the middle of a stream of saves.
            proc.stdin.write(b"save 100000\n")
            proc.stdin.flush()
            before = len(_acks(lines.lines))
            wanted = before + rng.choice([1, 2, 5, 10, 30])
            lines.until(lambda seen, n=wanted: len(_acks(seen)) >= n, deadline)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=DEADLINE)
            lines.drain()
        finally:
            if proc.poll() is None:  # pragma: no cover - only on a failed read
                proc.kill()
                proc.wait(timeout=DEADLINE)
            proc.stdin.close()
            if proc.stdout is not None:
                proc.stdout.close()
        acked |= _acks(lines.lines)
        lost = acked - _stored(path)
        assert not lost, f"round {r}: {len(lost)} acknowledged saves lost, e.g. {sorted(lost)[:3]}"
    with NexusStore[Note, str](path, model=Note) as notes:
        assert notes.database.integrity_check() == ["ok"]
    print(f"lock loss, client: {rounds} SIGKILLs, {len(acked)} acknowledged saves, 0 lost")
    return len(acked)


def test_client_with_several_connections_loses_no_acknowledged_save(tmp_path: Path) -> None:
    """3 rounds: two stores and a queue on one file, other processes, SIGKILL: 0 lost."""
    assert _client_rounds(tmp_path, rounds=3, seed=3) > 0


@pytest.mark.slow
def test_client_lock_loss_crash_30_rounds(tmp_path: Path) -> None:
    """The same over 30 rounds."""
    assert _client_rounds(tmp_path, rounds=30, seed=30) > 0


# -- the server: SQLite storage with an external reader, SIGKILL --------------------------------


def _op(n: int) -> RemoteOp:
    return RemoteOp(
        op_id=f"op-{n}",
        collection="note",
        item_id=f"n{n}",
        kind="upsert",
        data={"id": f"n{n}", "text": f"t{n}"},
        hlc=f"{n:016d}",
    )


async def _server_round(path: Path, rng: random.Random, first: int, pushes: int) -> set[str]:
    """Push, pull, let another process open the file, push more, SIGKILL; what was accepted."""
    accepted: set[str] = set()
    server = ServerProcess(f"sqlite:///{path}", tokens={"tok": "tenant"}).start()
    try:
        async with HttpBackend(server.base_url, token="tok", timeout=10) as backend:
            n = first
            for _ in range(3):
                result = await backend.push([_op(n)])
                accepted |= {f"n{n}"} if result.results[0].status == "accepted" else set()
                n += 1
                await backend.pull(0, 10)  # the server opens a reader connection
                await anyio.to_thread.run_sync(_touch_server_file, path, rng)
                for _ in range(pushes):
                    result = await backend.push([_op(n)])
                    if result.results[0].status == "accepted":
                        accepted.add(f"n{n}")
                    n += 1
    finally:
        server.kill()
    return accepted


def _touch_server_file(path: Path, rng: random.Random) -> None:
    """A monitoring script or the sqlite3 shell reading the server's file."""
    if rng.random() < 0.5:
        _other_process(path, "SELECT count(*) FROM nx_items")
    else:
        _other_process(path, "PRAGMA integrity_check")


def _server_stored(path: Path) -> set[str]:
    answer = _other_process(path, "SELECT group_concat(item_key, ' ') FROM nx_items")
    return {key.strip('"') for key in answer.split()} if answer != "None" else set()


async def _server_rounds(tmp_path: Path, rounds: int, seed: int) -> int:
    rng = random.Random(seed)
    path = tmp_path / "server.db"
    accepted: set[str] = set()
    for r in range(rounds):
        accepted |= await _server_round(path, rng, first=r * 1000, pushes=rng.randint(1, 5))
        stored = _server_stored(path)
        lost = accepted - stored
        assert not lost, f"round {r}: {len(lost)} accepted pushes lost, e.g. {sorted(lost)[:3]}"
    print(f"lock loss, server: {rounds} SIGKILLs, {len(accepted)} accepted pushes, 0 lost")
    return len(accepted)


@pytest.mark.anyio
async def test_server_with_an_external_reader_loses_no_accepted_push(tmp_path: Path) -> None:
    """2 rounds of push, pull, a reader opening server.db, more pushes, SIGKILL: 0 lost."""
    assert await _server_rounds(tmp_path, rounds=2, seed=2) > 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_lock_loss_crash_15_rounds(tmp_path: Path) -> None:
    """The same over 15 rounds."""
    assert await _server_rounds(tmp_path, rounds=15, seed=15) > 0


def test_attaching_an_open_database_file_is_refused(tmp_path: Path) -> None:
    """Attaching or uploading a database file (or its WAL) this process has open is a typed
    error: reading it outside SQLite would drop the locks; the store works on."""
    from pydantic import BaseModel  # noqa: PLC0415

    from nexus_store import FileTransferError, NexusStore  # noqa: PLC0415

    class Item(BaseModel):
        id: str

    path = tmp_path / "app.db"
    with NexusStore[Item, str](path, model=Item) as store:
        store.save(Item(id="a"))
        for source in (path, Path(f"{path}-wal")):
            with pytest.raises(FileTransferError, match="database file this process has open"):
                store.attach("a", source)
            with pytest.raises(FileTransferError):
                store.upload(source)
        store.save(Item(id="b"))
        assert _other_process(path, "SELECT count(*) FROM item") == "2"
        assert store.count() == 2
