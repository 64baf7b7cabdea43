"""A whole process whose clock is an hour behind the file (libfaketime) still syncs at once.

The file is written at the real time; then ``nexus-store sync`` (and a small script reading
the queue) run under Debian's ``faketime`` an hour in the past, as after an NTP correction,
a laptop resuming or a user fixing the date. Monotonic time is left alone, as a real step
leaves it. ``.ci/run`` installs ``faketime``; where the binary is missing these tests skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from nexus_store._backoff import RetryBackoff
from nexus_store._store import NexusStore
from nexus_store.queue import PrioritySyncQueue
from nexus_store.testing import ServerProcess

FAKETIME = shutil.which("faketime")
pytestmark = pytest.mark.skipif(FAKETIME is None, reason="needs Debian's faketime package")

_TOKENS = {f"tok{i}": f"tenant{i}" for i in range(8)}
_next_token = itertools.count()
_PYTHON = (sys.executable, "-c")


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server process on the real clock."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder}/server.db", tokens=_TOKENS) as running:
        yield running


def _behind(*command: str, hours: int = 1, env: dict[str, str] | None = None) -> str:
    """Run ``command`` with its wall clock ``hours`` behind; returns its output."""
    assert FAKETIME is not None
    full_env = {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1", **(env or {})}
    result = subprocess.run(  # noqa: PLW1510 - checked below, with the output in the message
        [FAKETIME, "-f", f"-{hours}h", *command],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_process_clock_really_is_behind() -> None:
    """The harness works: the child's wall clock reads an hour earlier than ours."""
    import time  # noqa: PLC0415

    out = _behind(*_PYTHON, "import time; print(time.time())")
    assert time.time() - float(out) == pytest.approx(3600, abs=60)


def test_a_sync_an_hour_behind_sends_every_queued_op(server: ServerProcess, tmp_path: Path) -> None:
    """100 ops queued, then `nexus-store sync` with its clock stepped back an hour: 0 stalled."""
    db = tmp_path / "app.db"
    store: NexusStore[Note, str] = NexusStore(db, model=Note)
    store.save_many([Note(id=f"n{i}") for i in range(100)])
    store.close()
    out = _behind(
        *_PYTHON,
        "from nexus_store.cli import main; main()",
        "sync",
        "--db",
        str(db),
        "--remote",
        server.base_url,
        env={"NEXUS_STORE_TOKEN": f"tok{next(_next_token)}"},
    )
    with PrioritySyncQueue(db, create=False) as queue:
        stalled = queue.stats().live
    print(f"\nops stalled by a 1 h step back of the clock: {stalled}")
    assert stalled == 0
    assert "nothing left to send" in out


def test_a_backoff_set_before_the_step_keeps_its_length(tmp_path: Path) -> None:
    """An op backing off 10 s, read by a process an hour behind: eligible within 10 s."""
    db = tmp_path / "app.db"
    with PrioritySyncQueue(db, backoff=RetryBackoff(10.0, jitter=False)) as queue:
        op = queue.enqueue("note", "a", b"\x80")
        queue.lease(1)
        queue.nack(op.op_id, "the network is down")
    script = (
        "import sys, time\n"
        "from nexus_store.queue import PrioritySyncQueue\n"
        "with PrioritySyncQueue(sys.argv[1]) as queue:\n"
        "    print(queue.next_eligible_at() - time.time())\n"
    )
    wait = float(_behind(*_PYTHON, script, str(db)))
    # The shift is computed from the clock reading taken while opening, a moment before
    # the script's own reading; allow that moment, not the hour.
    assert 0 < wait <= 10.0 + 0.5
