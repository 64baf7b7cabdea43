"""``nexus-store worker`` says why a run failed, and agrees with ``nexus-store jobs``.

Real processes: a ``nexus-store serve`` subprocess, ``nexus-store worker`` subprocesses
draining a file this test writes; the worker's lines are read as a user reads them.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nexus_store import NexusStore, SyncPriority
from nexus_store.cli import app
from nexus_store.sync import SyncEvent, SyncStopReason, SyncSummary
from nexus_store.sync._worker import next_attempt
from nexus_store.sync.workmanager import Constraints, StopReason, WorkInfo, WorkState
from nexus_store.testing import ServerProcess

LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str = ""


class Worker:
    """A worker subprocess whose stdout lines are collected by a thread."""

    def __init__(self, db: Path, url: str, token: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "worker", "--db", str(db), "--remote", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NEXUS_STORE_TOKEN": token},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """The first new line containing ``text`` (waits at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in: {self.lines}")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One sync server for the module."""
    with ServerProcess(tokens={"good": "tenant-reports"}) as running:
        yield running


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers started by a test, stopped after it."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(20)


def test_a_failed_run_says_why_when_and_when_next(
    tmp_path: Path, server: ServerProcess, workers: list[Worker]
) -> None:
    """Refused credentials: the worker's line gives the error, the time and the next attempt."""
    db = tmp_path / "app.db"
    with NexusStore[Note, str](db, model=Note) as store:
        store.save(Note(id="seed"))
        worker = Worker(db, server.base_url, "wrong-token", "--interval", "60")
        workers.append(worker)
        worker.expect("draining")
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        line = worker.expect("sync run failed")
    assert worker.stop() == 0
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z")
    assert rest.startswith("nexus-store worker: sync run failed (failure) at 20")
    assert "AuthError: the server refused the credentials (HTTP 401)" in rest
    assert "; next attempt at 20" in rest


def jobs_outcomes(db: Path) -> dict[tuple[str, str], str]:
    """``nexus-store jobs``'s run rows: (work id, start second) -> outcome, as printed."""
    jobs = CliRunner().invoke(app, ["jobs", "--db", str(db)])
    assert jobs.exit_code == 0, jobs.output
    rows: dict[tuple[str, str], str] = {}
    for line in jobs.output.split("work runs", 1)[1].splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 5 and cells[2] == "nexus-store.sync":
            rows[(cells[3], cells[1])] = cells[4]
    return rows


def test_jobs_shows_each_run_as_the_worker_reported_it(
    tmp_path: Path, server: ServerProcess, workers: list[Worker]
) -> None:
    """Every run the worker reported (JSON lines) is in `nexus-store jobs` with the same
    outcome: none it reported failed shows as success."""
    db = tmp_path / "app.db"
    with NexusStore[Note, str](db, model=Note) as store:
        store.save(Note(id="seed"))
        worker = Worker(db, server.base_url, "wrong-token", "--log-format", "json")
        workers.append(worker)
        worker.expect("draining")
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        worker.expect('"outcome": "failure"')
    assert worker.stop() == 0
    reported = [json.loads(text) for text in worker.lines if '"sync_run"' in text]
    assert any(entry["outcome"] == "failure" for entry in reported)
    shown = jobs_outcomes(db)
    for entry in reported:
        started = entry["started_at"].split(".")[0] + "Z"
        assert shown[(entry["work"], started)] == entry["outcome"], (entry, shown)


def test_json_log_lines_carry_the_run(
    tmp_path: Path, server: ServerProcess, workers: list[Worker]
) -> None:
    """--log-format json: one JSON object per line; a run's line has its outcome and counts."""
    db = tmp_path / "app.db"
    with NexusStore[Note, str](db, model=Note) as store:
        store.save(Note(id="seed"))
        worker = Worker(db, server.base_url, "good", "--log-format", "json", "--log-level", "debug")
        workers.append(worker)
        worker.expect("draining")
        store.save(Note(id="urgent"), priority=SyncPriority.CRITICAL)
        line = worker.expect('"pushed": 2')
    assert worker.stop() == 0
    entries = [json.loads(text) for text in worker.lines]
    run = json.loads(line)
    assert (run["event"], run["outcome"], run["level"]) == ("sync_run", "success", "info")
    assert run["stop_reason"] == "drained"
    assert all(entry["time"].endswith("Z") for entry in entries)
    assert any(entry["level"] == "debug" for entry in entries)


def _info(state: WorkState, due: float) -> WorkInfo:
    return WorkInfo(
        id=f"w-{state.value}",
        worker_name="nexus-store.sync",
        state=state,
        tags=frozenset(),
        unique_name=None,
        output={},
        progress={},
        run_attempt_count=0,
        period_count=0,
        generation=0,
        next_schedule_time=due if state is WorkState.ENQUEUED else math.inf,
        stop_reason=StopReason.NOT_STOPPED,
        constraints=Constraints(),
        initial_delay=0.0,
        interval=None,
        flex=None,
        expedited=False,
        priority=SyncPriority.NORMAL,
    )


def _failed(paused_until: float | None) -> SyncEvent:
    summary = SyncSummary(
        run_id="r",
        task_id="nexus-store.sync",
        started_at=datetime.fromtimestamp(1000.0, UTC),
        duration=0.01,
        stop_reason=SyncStopReason.AUTH,
        paused_until=None if paused_until is None else datetime.fromtimestamp(paused_until, UTC),
    )
    return SyncEvent(
        task_id="nexus-store.sync", run_id="r", success=False, message="", duration=0.01,
        summary=summary,
    )  # fmt: skip


def test_the_next_attempt_after_a_run() -> None:
    """The next attempt a run's line gives: the earliest waiting work; now when another
    run is already under way (the periodic run started as the expedited one failed); never
    before the remote's pause ends; none when nothing is scheduled."""
    now = 1000.0
    waiting = _info(WorkState.ENQUEUED, 1060.0)
    running = _info(WorkState.RUNNING, 0.0)
    assert next_attempt([waiting], None, now) == 1060.0
    assert next_attempt([waiting, running], None, now) == now
    assert next_attempt([running], _failed(1005.0), now) == 1005.0
    assert next_attempt([waiting], _failed(1005.0), now) == 1060.0
    assert next_attempt([], _failed(1005.0), now) is None
