"""A program that forgets to close what it opened still exits promptly, with a warning.

Each case is a real interpreter running a small user program; a case that hangs fails
on the time limit instead of hanging the suite. The cases run on this interpreter and on
any listed in ``NEXUS_STORE_TEST_PYTHONS`` (space-separated paths of interpreters that
have nexus-store installed), so the design can be checked on every supported CPython.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_store.testing import ServerProcess

EXIT_LIMIT = 30.0
"""Seconds a case may take, start to exit (an exit normally takes well under one)."""

PYTHONS = [sys.executable, *os.environ.get("NEXUS_STORE_TEST_PYTHONS", "").split()]

PRELUDE = """
import sys
from pydantic import BaseModel
from nexus_store import NexusStore, SyncPriority
from nexus_store.backends import HttpBackend, MemoryBackend

class Note(BaseModel):
    id: str
    text: str
"""


@pytest.fixture(params=PYTHONS, ids=lambda p: Path(p).name if p != sys.executable else "this")
def python(request: pytest.FixtureRequest) -> str:
    """An interpreter to run the user programs with."""
    return str(request.param)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real sync server for the cases that use HttpBackend."""
    with ServerProcess(tokens={"dev-token": "tenant-a"}) as running:
        yield running


SLOW_CALLBACK = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")


def significant(stderr: str) -> str:
    """stderr without asyncio debug mode's notes about slow steps (-X dev logs each step
    over 0.1 s: on a busy machine that is timing, not something left open)."""
    return "".join(
        line for line in stderr.splitlines(keepends=True) if not SLOW_CALLBACK.match(line.strip())
    )


def run(
    python: str,
    tmp_path: Path,
    body: str,
    *,
    flags: tuple[str, ...] = ("-W", "default"),
    args: tuple[str, ...] = (),
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a user program (the prelude, then ``body``) and wait at most EXIT_LIMIT."""
    script = tmp_path / "app.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    try:
        return subprocess.run(
            [python, *flags, str(script), *args],
            cwd=tmp_path,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_LIMIT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the program did not exit within {EXIT_LIMIT} s: {exc.stderr!r}")


QUICK_START_WITHOUT_CLOSE = """
store = NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend())
store.save(Note(id="n1", text="hello"), priority=SyncPriority.CRITICAL)
summary = store.sync()
print("pushed", summary.pushed)
"""


def test_quick_start_without_close_exits_with_a_resource_warning(
    python: str, tmp_path: Path
) -> None:
    """The README's quick start without close() exits at once and names the open store."""
    done = run(python, tmp_path, QUICK_START_WITHOUT_CLOSE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pushed 1\n"
    assert "ResourceWarning: NexusStore(':memory:', model=Note) was never closed" in done.stderr


def test_exception_after_sync_exits_with_the_error(python: str, tmp_path: Path) -> None:
    """An exception after store.sync() ends the program with its traceback, no hang."""
    done = run(
        python,
        tmp_path,
        QUICK_START_WITHOUT_CLOSE + "raise RuntimeError('the app failed')\n",
    )
    assert done.returncode == 1
    assert "RuntimeError: the app failed" in done.stderr


def test_sys_exit_after_sync_exits_with_its_code(python: str, tmp_path: Path) -> None:
    """sys.exit() after store.sync() exits with that code."""
    done = run(python, tmp_path, QUICK_START_WITHOUT_CLOSE + "sys.exit(3)\n")
    assert done.returncode == 3, done.stderr


def test_leaving_python_i_exits(python: str, tmp_path: Path) -> None:
    """Leaving `python -i` (end of input at the prompt) after a sync exits."""
    done = run(python, tmp_path, QUICK_START_WITHOUT_CLOSE, flags=("-W", "default", "-i"), stdin="")
    assert done.returncode == 0, done.stderr
    assert "pushed 1" in done.stdout


def test_quick_start_with_close_prints_no_warning(python: str, tmp_path: Path) -> None:
    """The README's form (`with NexusStore(...)`) exits cleanly even under -W error -X dev."""
    done = run(
        python,
        tmp_path,
        """
        with NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend()) as store:
            store.save(Note(id="n1", text="hello"))
            print("pushed", store.sync().pushed)
        """,
        flags=("-W", "error", "-X", "dev"),
    )
    assert (done.returncode, done.stdout, significant(done.stderr)) == (0, "pushed 1\n", "")


def test_background_thread_never_stopped_exits(python: str, tmp_path: Path) -> None:
    """A BackgroundSyncThread never stopped (the store closed or not) does not hang exit."""
    for close_store in ("store.close()", "pass"):
        done = run(
            python,
            tmp_path,
            f"""
            from nexus_store.sync import BackgroundSyncServiceFactory, BackgroundSyncThread

            store = NexusStore[Note, str]("app.db", model=Note, backend=MemoryBackend())
            bridge = BackgroundSyncThread(BackgroundSyncServiceFactory.create(store)).start()
            bridge.schedule_sync()
            store.save(Note(id="n1", text="hello"))
            bridge.sync_now()
            print("pending", store.queue.stats().pending)
            {close_store}
            """,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "pending 0\n"
        assert "ResourceWarning: BackgroundSyncThread(" in done.stderr


def test_http_backend_left_open_is_closed_at_exit(
    python: str, tmp_path: Path, server: ServerProcess
) -> None:
    """An HttpBackend a program never closed (nor its store) is closed at exit, warned about."""
    done = run(
        python,
        tmp_path,
        """
        backend = HttpBackend(sys.argv[1], token="dev-token")
        store = NexusStore[Note, str]("app.db", model=Note, backend=backend, owns_backend=False)
        store.save(Note(id="n1", text="hello"))
        print("pushed", store.sync().pushed)
        """,
        args=(server.base_url,),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pushed 1\n"
    assert "HttpBackend(" in done.stderr
    assert "NexusStore('app.db', model=Note) was never closed" in done.stderr
    # Closed by us, not found open by asyncio or the socket module at shutdown:
    assert "unclosed transport" not in done.stderr
    assert "unclosed <socket" not in done.stderr


def test_store_closes_its_http_backend(python: str, tmp_path: Path, server: ServerProcess) -> None:
    """store.close() closes the backend it was given: a synchronous app has nothing left open."""
    done = run(
        python,
        tmp_path,
        """
        with NexusStore[Note, str](
            "app.db", model=Note, backend=HttpBackend(sys.argv[1], token="dev-token")
        ) as store:
            store.save(Note(id="n1", text="hello"))
            print("pushed", store.sync().pushed)
        print("backend closed:", store.backend._closed)
        """,
        flags=("-W", "error", "-X", "dev"),
        args=(server.base_url,),
    )
    assert (done.returncode, significant(done.stderr)) == (0, "")
    assert done.stdout == "pushed 1\nbackend closed: True\n"


USER_APP = """
import asyncio
from nexus_store import LocalChange
from nexus_store.backends import PostgresBackend
from nexus_store.sync import BackgroundSyncServiceFactory, BackgroundSyncThread

url, dsn = sys.argv[1], sys.argv[2]

# A synchronous app: an HTTP store with a change stream and a background thread.
http = HttpBackend(url, token="dev-token")
with NexusStore[Note, str]("app.db", model=Note, backend=http) as store:
    changes = store.watch()
    with BackgroundSyncThread(BackgroundSyncServiceFactory.create(store)) as bridge:
        store.save(Note(id="n1", text="hello"), priority=SyncPriority.CRITICAL)
        assert store.wait_synced("n1", timeout=20)
        assert bridge.sync_now().failed == 0
    assert isinstance(next(iter(changes)), LocalChange)

# PostgreSQL straight from a synchronous app, a backend shared by two stores.
with PostgresBackend(dsn, tenant="app") as pg:
    with NexusStore[Note, str]("pg.db", model=Note, backend=pg, owns_backend=False) as a:
        a.save(Note(id="p1", text="via pg"))
        assert a.sync().pushed == 1
    with NexusStore[Note, str]("pg2.db", model=Note, backend=pg, owns_backend=False) as b:
        assert b.sync().pulled == 1

# An async app: the same, with async with.
async def main():
    async with HttpBackend(url, token="dev-token") as backend:
        shared = dict(backend=backend, owns_backend=False)
        async with NexusStore[Note, str](":memory:", model=Note, **shared) as s:
            s.save(Note(id="a1", text="async"))
            assert (await s.async_sync()).pushed == 1
    owned = HttpBackend(url, token="dev-token")
    async with NexusStore[Note, str]("async.db", model=Note, backend=owned) as s:
        assert (await s.async_sync()).pulled >= 2

asyncio.run(main())
print("done")
"""


@pytest.mark.postgres
def test_a_user_app_leaves_nothing_open(python: str, tmp_path: Path, server: ServerProcess) -> None:
    """Stores, HTTP and PostgreSQL backends, a change stream and a background thread, used
    and closed as the README teaches, in sync and async code: -W error -X dev stays silent."""
    from nexus_store.testing import shared_postgres  # noqa: PLC0415

    dsn = shared_postgres().create_database()
    done = run(
        python,
        tmp_path,
        USER_APP,
        flags=("-W", "error", "-X", "dev"),
        args=(server.base_url, dsn),
    )
    assert (done.returncode, done.stdout, significant(done.stderr)) == (0, "done\n", "")


def test_a_forked_child_exits_promptly(python: str, tmp_path: Path) -> None:
    """A child forked after store.sync() started the loop exits at once (the loop thread
    does not survive fork(); the child starts its own loop if it syncs)."""
    done = run(
        python,
        tmp_path,
        QUICK_START_WITHOUT_CLOSE
        + """
import os
pid = os.fork()
if pid == 0:
    child = NexusStore[Note, str](":memory:", model=Note, backend=MemoryBackend())
    child.save(Note(id="c1", text="in the child"))
    print("child pushed", child.sync().pushed, flush=True)
    child.close()
    sys.exit(0)  # the normal exit path: at-exit closing runs in the child too
os.waitpid(pid, 0)
store.close()
""",
        flags=("-W", "default", "-W", "ignore::DeprecationWarning"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pushed 1\nchild pushed 1\n"
