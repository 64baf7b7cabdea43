"""WM-22 with real processes: a WorkManager SIGKILLed mid-run resumes its schedule in a new process.

A first child process runs a WorkManager on a database file with periodic, retrying and
unique work, and is killed with SIGKILL while a worker runs. A second child process opens
the same file: the schedule (next run times, attempt counts, unique names, tags) is as the
first process left it, and the interrupted work runs again.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from nexus_store._database import Database

T0 = 1_700_000_000.0

_COMMON = """
import json
import sys

import anyio

from nexus_store.testing import FakeClock
from nexus_store._database import Database
from nexus_store.sync import TaskResult
from nexus_store.sync.device import SimulatedDevice
from nexus_store.sync.workmanager import (
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OneTimeWorkRequestBuilder,
    PeriodicWorkRequestBuilder,
    WorkInfo,
    WorkQuery,
    WorkState,
)
from nexus_store.sync.workmanager._workmanager import WorkManager
from nexus_store.sync.workmanager._persistence import WorkStore


class Task:
    def __init__(self, task_id, result=True, block=False):
        self.task_id = task_id
        self.result = result
        self.block = block

    async def execute(self, context):
        if self.block:
            await anyio.Event().wait()  # runs until the process is killed
        return self.result


async def wait_for(wm, work_id, predicate):
    with anyio.fail_after(20):
        async with wm.subscribe(work_id) as watch:
            async for info in watch:
                if predicate(info):
                    return info


def enqueued(attempts):
    return lambda i: i.run_attempt_count == attempts and i.state is WorkState.ENQUEUED


def dump(infos):
    dumped = [info.model_dump(mode="json") for info in infos]
    return json.dumps(sorted(dumped, key=lambda i: i["id"]))
"""

_FIRST = """
async def main(path, start):
    clock = FakeClock(start)
    db = Database(path)
    async with WorkManager(db, clock=clock, device=SimulatedDevice()) as wm:
        wm.register(Task("tick"))
        wm.register(Task("flaky", TaskResult.retry()))
        wm.register(Task("blocker", block=True))
        tick = PeriodicWorkRequestBuilder("tick", 3600).add_tag("periodic").build()
        await wm.enqueue_unique("ticker", ExistingPeriodicWorkPolicy.KEEP, tick)
        await wait_for(wm, tick.id, lambda i: i.period_count == 1 and i.state is WorkState.ENQUEUED)
        clock.advance(10)
        flaky = OneTimeWorkRequestBuilder("flaky").add_tag("retrying").build()
        await wm.enqueue(flaky)
        await wait_for(wm, flaky.id, enqueued(1))
        clock.advance(30)
        await wait_for(wm, flaky.id, enqueued(2))
        clock.advance(5)
        blocker = OneTimeWorkRequestBuilder("blocker").add_tag("b").build()
        await wm.enqueue_unique("blocker-name", ExistingWorkPolicy.KEEP, blocker)
        await wait_for(wm, blocker.id, lambda i: i.state is WorkState.RUNNING)
        print("READY", clock.now(), dump(await wm.get_work_infos()), flush=True)
        await anyio.Event().wait()


anyio.run(main, sys.argv[1], float(sys.argv[2]))
"""

_SECOND = """
async def main(path, start):
    db = Database(path)
    store = WorkStore(db)
    before = [WorkInfo.from_spec(spec) for spec in store.find(WorkQuery())]
    print("BEFORE", dump(before), flush=True)
    clock = FakeClock(start)
    async with WorkManager(db, clock=clock, device=SimulatedDevice()) as wm:
        wm.register(Task("tick"))
        wm.register(Task("flaky", TaskResult.retry()))
        wm.register(Task("blocker", True))
        blocker = [i for i in before if i.worker_name == "blocker"][0]
        flaky = [i for i in before if i.worker_name == "flaky"][0]
        await wait_for(wm, blocker.id, lambda i: i.state is WorkState.SUCCEEDED)
        await wait_for(wm, flaky.id, enqueued(3))
        await wm.settle()
        print("AFTER", dump(await wm.get_work_infos()), flush=True)
        runs = await wm.run_history(blocker.id)
        print("RUNS", json.dumps([run.model_dump(mode="json") for run in runs]), flush=True)
    db.close()


anyio.run(main, sys.argv[1], float(sys.argv[2]))
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(_COMMON) + textwrap.dedent(body))
    return path


def _read_line(lines: queue.Queue[str], prefix: str, timeout: float) -> str:
    while True:
        line = lines.get(timeout=timeout)  # raises queue.Empty when the child hangs
        if line.startswith(prefix):
            return line[len(prefix) :].strip()


def _by_worker(payload: str) -> dict[str, dict[str, Any]]:
    return {info["worker_name"]: info for info in json.loads(payload)}


def test_wm22_sigkill_during_a_run_then_resume_in_a_new_process(tmp_path: Path) -> None:
    """WM-22: after SIGKILL mid-run, a new process finds the schedule intact and reruns the work."""
    db_path = tmp_path / "app.db"
    stderr_path = tmp_path / "first.stderr"
    lines: queue.Queue[str] = queue.Queue()
    with (
        stderr_path.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, str(_script(tmp_path, "first.py", _FIRST)), str(db_path), str(T0)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        ) as first,
    ):
        stdout = first.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            ready = _read_line(lines, "READY", timeout=60)
        except queue.Empty:
            raise AssertionError(
                f"first process did not get ready: {stderr_path.read_text()}"
            ) from None
        finally:
            if first.poll() is None:
                os.kill(first.pid, signal.SIGKILL)  # mid-run: the blocker is RUNNING
            first.wait(timeout=30)
            reader.join(timeout=30)
    assert first.returncode == -signal.SIGKILL
    crash_time_text, _, payload = ready.partition(" ")
    crash_time = float(crash_time_text)
    at_crash = _by_worker(payload)

    db = Database(db_path)
    assert db.integrity_check() == ["ok"]
    db.close()

    resume_at = crash_time + 60
    second = subprocess.run(
        [
            sys.executable,
            str(_script(tmp_path, "second.py", _SECOND)),
            str(db_path),
            str(resume_at),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    output = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in second.stdout.splitlines()}
    before = _by_worker(output["BEFORE"])
    after = _by_worker(output["AFTER"])
    runs = json.loads(output["RUNS"])

    # The schedule on disk is exactly what the killed process had.
    for worker in ("tick", "flaky", "blocker"):
        for field in (
            "id",
            "state",
            "tags",
            "unique_name",
            "run_attempt_count",
            "period_count",
            "next_schedule_time",
            "interval",
        ):
            was, now = at_crash[worker][field], before[worker][field]
            if field == "tags":  # a set: JSON order differs between processes
                was, now = sorted(was), sorted(now)
            assert now == was, (worker, field)
    assert before["blocker"]["state"] == "running"
    assert before["tick"]["unique_name"] == "ticker"
    assert before["blocker"]["unique_name"] == "blocker-name"
    assert set(before["tick"]["tags"]) == {"tick", "periodic"}
    assert before["flaky"]["run_attempt_count"] == 2
    assert before["flaky"]["next_schedule_time"] == T0 + 40 + 60  # retried at T0+40, 2nd backoff
    assert before["tick"]["next_schedule_time"] == T0 + 3600

    # The new process resumed it: the interrupted run ran again, the rest kept its timing.
    assert after["blocker"]["state"] == "succeeded"
    assert after["blocker"]["run_attempt_count"] == 2
    assert [run["outcome"] for run in reversed(runs)] == ["interrupted", "success"]
    assert runs[1]["attempt"] == 0
    assert runs[0]["attempt"] == 1
    assert after["flaky"]["run_attempt_count"] == 3
    assert after["flaky"]["next_schedule_time"] == resume_at + 120
    assert after["tick"]["state"] == "enqueued"
    assert after["tick"]["period_count"] == 1
    assert after["tick"]["next_schedule_time"] == T0 + 3600
