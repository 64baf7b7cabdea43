"""Crash safety: SIGKILL a writer at random points; every acknowledged save survives intact."""

from __future__ import annotations

import collections
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store._codec import decode

WRITER = Path(__file__).with_name("crash_writer.py")
ROUND_DEADLINE = 60.0


class Record(BaseModel):
    """The writer's record (same fields as in crash_writer.py)."""

    id: str
    batch: str
    size: int
    version: int = 0
    body: str


def _read_lines(proc: subprocess.Popen[bytes], wanted: int, deadline: float) -> list[str]:
    """Read whole lines from the writer until ``wanted`` acks arrived (bounded by time)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    lines: list[str] = []
    acks = 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while acks < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"writer gave {acks} of {wanted} acks in time")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"writer exited early: {proc.wait(5)}")
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                lines.append(line.decode())
                acks += line.startswith(b"ack ")
    return lines


def _acked_ids(lines: list[str]) -> set[str]:
    return {item for line in lines if line.startswith("ack ") for item in line.split()[1:]}


def _check_file(path: Path, acked: set[str]) -> int:
    """Every acked record is stored with exactly one op; rows and ops match one to one."""
    with NexusStore[Record, str](path, model=Record) as store:
        assert store.database.integrity_check() == ["ok"]
        # The killed writers' stream registrations went when this store opened.
        assert store.database.execute("SELECT count(*) FROM nx_watchers")[0][0] == 0
        items = {record.id: record for record in store.all()}
        ops = store.pending()
        missing = acked - items.keys()
        assert not missing, f"acknowledged saves lost: {sorted(missing)[:5]}"
        per_item = collections.Counter(op.item_id for op in ops)
        assert set(per_item) == set(items), "an item without its op or an op without its item"
        assert max(per_item.values(), default=1) == 1, "an item with more than one op"
        for op in ops:
            assert op.payload is not None
            assert decode(op.payload) == items[str(op.item_id)].model_dump(mode="json")
        batches = collections.Counter(record.batch for record in items.values())
        for record in items.values():
            assert batches[record.batch] == record.size, f"save_many {record.batch} torn"
        logged = {
            row[0]
            for row in store.database.execute(
                "SELECT DISTINCT item_id FROM nx_changes WHERE collection = 'record'"
            )
        }
        assert logged == set(items)
        return len(items)


def _crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    acked: set[str] = set()
    for r in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), f"r{r}", str(rng.randrange(2**31))],
            stdout=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + ROUND_DEADLINE
            lines = _read_lines(proc, 0, deadline)
            while "ready" not in lines:
                lines += _read_lines(proc, 1, deadline)
            # Kill right after a random number of acknowledged writes: the writer is then
            # somewhere inside the next save (or between two).
            lines += _read_lines(proc, rng.choice([0, 1, 2, 5, 10, 30]), deadline)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=ROUND_DEADLINE)
            assert proc.stdout is not None
            tail = proc.stdout.read() or b""
        finally:
            if proc.poll() is None:  # pragma: no cover - only on a failed read
                proc.kill()
                proc.wait(timeout=ROUND_DEADLINE)
            if proc.stdout is not None:
                proc.stdout.close()
        # Lines still in the pipe were printed after their save returned: acked too.
        complete = tail.decode().split("\n")[:-1]
        acked |= _acked_ids(lines + complete)
        stored = _check_file(path, acked)
        assert stored >= len(acked)


def test_sigkill_during_saves_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """20 writers killed at random points: acked saves all there, rows and ops one to one."""
    _crash_rounds(tmp_path, rounds=20, seed=20)


@pytest.mark.slow
def test_sigkill_during_saves_100_times(tmp_path: Path) -> None:
    """The same check over 100 kills."""
    _crash_rounds(tmp_path, rounds=100, seed=100)
