"""The BGTask-like scheduler keeps pending requests, its flags and its history across restarts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_store._database import Database
from nexus_store.sync.bgtask._bgtask import BGTaskScheduler
from nexus_store.sync.bgtask._handle import BGTaskHandle, LaunchRecord
from nexus_store.sync.bgtask._launch import (
    DeterministicLaunchPolicy,
    LaunchPolicy,
    OpportunisticLaunchPolicy,
)
from nexus_store.sync.bgtask._requests import (
    AppRefreshRequest,
    ContinuedProcessingRequest,
    ProcessingRequest,
    RequestKind,
    SubmissionStrategy,
)
from nexus_store.sync.device import SimulatedDevice
from nexus_store.testing import FakeClock

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
WAIT = 5


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A database file path."""
    return tmp_path / "app.db"


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at T0."""
    return FakeClock(start=T0)


@asynccontextmanager
async def opened(
    path: Path,
    identifiers: list[str],
    clock: FakeClock,
    handlers: dict[str, Any],
    *,
    device: SimulatedDevice | None = None,
    policy: LaunchPolicy | None = None,
    **options: Any,
) -> AsyncIterator[BGTaskScheduler]:
    """A scheduler on a freshly opened database file, closed (both) on exit: one "process"."""
    database = Database(path)
    try:
        scheduler = BGTaskScheduler(
            database,
            identifiers,
            clock=clock,
            device=device or SimulatedDevice(),
            policy=policy or DeterministicLaunchPolicy(),
            handlers=handlers,
            **options,
        )
        with anyio.fail_after(WAIT):
            async with scheduler:
                yield scheduler
    finally:
        database.close()


async def complete(task: BGTaskHandle) -> None:
    """A handler that succeeds at once."""
    task.set_task_completed(True)


async def fail(task: BGTaskHandle) -> None:
    """A handler that fails at once."""
    task.set_task_completed(False, message="no luck")


async def hang(task: BGTaskHandle) -> None:
    """A handler that never completes."""
    await anyio.sleep_forever()


def _history(path: Path) -> list[tuple[Any, ...]]:
    database = Database(path)
    try:
        return database.execute(
            "SELECT identifier, success, message, ended_at FROM nx_bg_history ORDER BY id"
        )
    finally:
        database.close()


async def test_pending_requests_survive_reopen(path: Path, clock: FakeClock) -> None:
    """Pending requests (kinds, options, order, replacements, queued ones) survive a restart."""
    ids = ["r", "p1", "p2", "app.export.*"]
    handlers = {"r": complete, "p1": complete, "p2": complete, "app.export.*": hang}
    async with opened(path, ids, clock, handlers) as s:
        s.submit(ProcessingRequest("p1", earliest_begin=T0 + 600))
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        s.submit(ProcessingRequest("p2", T0 + 700, requires_network=True))
        s.submit(ProcessingRequest("p1", T0 + 900, requires_external_power=True))  # replaces
        s.submit(ContinuedProcessingRequest("app.export.1", "Export"))  # runs now
        s.submit(
            ContinuedProcessingRequest(
                "app.export.2", "Export", subtitle="2 of 2", strategy=SubmissionStrategy.QUEUE
            )
        )
        before = s.pending_requests()
    expected = [
        AppRefreshRequest("r", earliest_begin=T0 + 60),
        ProcessingRequest("p2", T0 + 700, requires_network=True),
        ProcessingRequest("p1", T0 + 900, requires_external_power=True),
        ContinuedProcessingRequest("app.export.2", "Export", subtitle="2 of 2"),
    ]
    assert before == expected
    async with opened(path, ids, clock, handlers) as s:
        await _started(s, "app.export.2")  # a queued continued request starts once a slot is free
        assert s.pending_requests() == expected[:3]


async def _started(s: BGTaskScheduler, identifier: str) -> bool:
    with anyio.fail_after(WAIT):
        while s.running_task(identifier) is None:
            await s.settle()
    return True


async def test_pending_requests_survive_reopen_without_running(
    path: Path, clock: FakeClock
) -> None:
    """Requests submitted before the loop ever ran are stored and launch in the next process."""
    database = Database(path)
    scheduler = BGTaskScheduler(database, ["r"], clock=clock, handlers={"r": complete})
    scheduler.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
    database.close()
    launched: list[float] = []

    async def record(task: BGTaskHandle) -> None:
        launched.append(task.started_at)
        task.set_task_completed(True)

    async with opened(path, ["r"], clock, {"r": record}) as s:
        assert s.pending_requests() == [AppRefreshRequest("r", earliest_begin=T0 + 60)]
        clock.advance(60)
        with anyio.fail_after(WAIT):
            while not launched:
                await s.settle()
        assert launched == [T0 + 60]
    async with opened(path, ["r"], clock, {"r": record}) as s:
        assert s.pending_requests() == []  # one-shot, also across restarts


async def test_history_survives_reopen(path: Path, clock: FakeClock) -> None:
    """The launch history (start, end, duration, success, message) survives a restart."""
    handlers = {"ok": complete, "bad": fail, "slow": hang}
    async with opened(path, list(handlers), clock, handlers) as s:
        s.submit(AppRefreshRequest("ok"))
        await _started_or_done(s, "ok")
        clock.advance(10)
        s.submit(AppRefreshRequest("bad"))
        await _finished(s.simulate_launch("bad"))
        s.submit(AppRefreshRequest("slow"))
        handle = s.simulate_launch("slow")
        clock.advance(25)
        await _finished(handle)
        before = s.history()
    assert [(r.identifier, r.success) for r in before] == [
        ("slow", False),
        ("bad", False),
        ("ok", True),
    ]
    async with opened(path, list(handlers), clock, handlers) as s:
        after = s.history()
        assert after == before
        slow_record = s.history("slow")[0]
        assert slow_record.duration == 25.0  # no expiration handler: ended at expiry
        assert slow_record.started_at == T0 + 10
        assert slow_record.ended_at == T0 + 35
        assert s.history("bad")[0].message == "no luck"
        assert s.history(limit=1) == before[:1]


async def _finished(handle: BGTaskHandle) -> LaunchRecord:
    with anyio.fail_after(WAIT):
        return await handle.wait_finished()


async def test_launch_running_at_close_is_recorded(path: Path, clock: FakeClock) -> None:
    """A launch still running when the scheduler closes is recorded unsuccessful, not relaunched."""
    async with opened(path, ["r"], clock, {"r": hang}) as s:
        s.submit(AppRefreshRequest("r"))
        await _started(s, "r")
    rows = _history(path)
    assert rows == [("r", 0, "the scheduler closed before the task finished", T0)]
    async with opened(path, ["r"], clock, {"r": hang}) as s:
        assert s.pending_requests() == []
        assert s.history()[0].success is False


async def test_force_quit_flag_survives_reopen(path: Path, clock: FakeClock) -> None:
    """The force-quit flag persists until the app is opened; then launches resume."""
    launched = anyio.Event()

    async def record(task: BGTaskHandle) -> None:
        launched.set()
        task.set_task_completed(True)

    async with opened(path, ["r"], clock, {"r": record}) as s:
        s.force_quit()
        s.submit(AppRefreshRequest("r"))
        await s.settle()
    async with opened(path, ["r"], clock, {"r": record}) as s:
        assert s.force_quit_active
        clock.advance(3600)
        await s.settle()
        assert not launched.is_set()
        s.app_opened()
        with anyio.fail_after(WAIT):
            await launched.wait()
    async with opened(path, ["r"], clock, {"r": record}) as s:
        assert not s.force_quit_active


async def test_usage_survives_reopen(path: Path, clock: FakeClock) -> None:
    """Launch times and the app's last opening feed the opportunistic policy after a restart."""
    policy = OpportunisticLaunchPolicy(min_spacing=600, app_usage_window=3600)
    device = SimulatedDevice(idle=True)
    async with opened(path, ["r", "p"], clock, {"r": complete, "p": complete}) as s:
        s.app_opened()
        s.submit(AppRefreshRequest("r"))
        await _started_or_done(s, "r")
    clock.advance(60)
    async with opened(
        path, ["r", "p"], clock, {"r": complete, "p": complete}, policy=policy, device=device
    ) as s:
        s.submit(AppRefreshRequest("r"))
        await s.settle()
        assert s.pending_reason("r") == "rate limited after the last launch"
        clock.advance(7200)
        s.submit(ProcessingRequest("p"))
        await s.settle()
        assert s.pending_reason("p") == "the app was not used recently"


async def _started_or_done(s: BGTaskScheduler, identifier: str) -> None:
    with anyio.fail_after(WAIT):
        while not s.history(identifier) or s.history(identifier)[0].success is None:
            await s.settle()


async def test_undeclared_requests_dropped_on_reopen(path: Path, clock: FakeClock) -> None:
    """A stored request whose identifier is no longer declared is dropped at startup."""
    async with opened(path, ["r", "p"], clock, {"r": complete, "p": complete}) as s:
        s.submit(AppRefreshRequest("r", earliest_begin=T0 + 60))
        s.submit(ProcessingRequest("p", earliest_begin=T0 + 60))
    async with opened(path, ["p"], clock, {"p": complete}) as s:
        assert [r.identifier for r in s.pending_requests()] == ["p"]
    async with opened(path, ["r", "p"], clock, {"r": complete, "p": complete}) as s:
        assert [r.identifier for r in s.pending_requests()] == ["p"]


async def test_history_is_bounded(path: Path, clock: FakeClock) -> None:
    """Only the newest history_limit launches are kept."""
    async with opened(path, ["r"], clock, {"r": complete}, history_limit=3) as s:
        for _ in range(5):
            s.submit(AppRefreshRequest("r"))
            await _finished(s.simulate_launch("r"))
        assert [r.id for r in s.history()] == [5, 4, 3]


_CHILD = textwrap.dedent(
    """
    import sys
    import anyio
    from nexus_store.testing import FakeClock
    from nexus_store._database import Database
    from nexus_store.sync.bgtask import (
        AppRefreshRequest, DeterministicLaunchPolicy, ProcessingRequest,
    )
    from nexus_store.sync.bgtask._bgtask import BGTaskScheduler

    async def handler(task):
        print("launched", flush=True)
        await anyio.sleep_forever()

    async def main():
        db = Database(sys.argv[1])
        clock = FakeClock(start=float(sys.argv[2]))
        scheduler = BGTaskScheduler(
            db, ["r", "later"], clock=clock, policy=DeterministicLaunchPolicy(),
            handlers={"r": handler, "later": handler},
        )
        async with scheduler:
            scheduler.submit(ProcessingRequest("later", earliest_begin=clock.now() + 3600))
            scheduler.submit(AppRefreshRequest("r"))
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


def test_sigkill_during_launch(path: Path) -> None:
    """A process killed during a launch leaves it recorded as interrupted, not pending again."""
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(T0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        try:
            assert child.stdout is not None
            line = _readline_within(child, 60)
            assert line == b"launched\n", child.stderr.read() if child.stderr else b""
        finally:
            child.kill()
            child.wait(timeout=30)
    assert _history(path) == [("r", None, "", None)]  # the row the dead process left open
    database = Database(path)
    try:
        scheduler = BGTaskScheduler(database, ["r", "later"], clock=FakeClock(start=T0))
        [record] = scheduler.history()
        assert (record.identifier, record.kind, record.success) == (
            "r",
            RequestKind.APP_REFRESH,
            False,
        )
        assert record.message.startswith("interrupted")
        assert record.ended_at is None
        assert [r.identifier for r in scheduler.pending_requests()] == ["later"]
    finally:
        database.close()


def _readline_within(child: subprocess.Popen[bytes], seconds: float) -> bytes:
    """Read one line of the child's stdout, failing after ``seconds``."""
    result: list[bytes] = []

    def read() -> None:
        assert child.stdout is not None
        result.append(child.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    if not result:
        pytest.fail(f"the child did not launch within {seconds} s")
    return result[0]
