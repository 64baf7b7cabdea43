"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

A real ``nexus-store dashboard`` process serves a store file that holds a bit of
everything (queued ops of each priority, a dead letter, a quarantined change, jobs with a
history). The tests click every control and check its effect on the file, check that a
save made by another process appears on the page within a second, and take the
screenshots the user guide shows (see ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from playwright.sync_api import Page, expect
from pydantic import BaseModel

from nexus_store import ErrorKind, NexusStore, SyncPriority
from nexus_store._quarantine import Quarantine
from nexus_store.backends import Change
from nexus_store.backends._memory import MemoryBackend
from nexus_store.sync import (
    BackgroundSyncConfig,
    JobConstraints,
    JobDefinition,
    PeriodicSchedule,
    TaskContext,
    TaskResult,
    WorkManagerSyncService,
)
from nexus_store.sync._jobs import JobTable
from nexus_store.sync.device import SimulatedDevice

LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str = ""


async def _cleanup(context: TaskContext) -> TaskResult:
    return TaskResult.success(message="removed 3 cached files")


def _populate(path: Path) -> None:
    """A file with queued ops, dead letters, a quarantined change and jobs with runs."""
    with NexusStore(path, model=Note) as store:
        for n, priority in enumerate(SyncPriority):
            store.save(Note(id=f"q{n}", text="queued"), priority=priority)
        store.save(Note(id="poison-1"), priority=SyncPriority.HIGH)
        store.save(Note(id="poison-2"), priority=SyncPriority.NORMAL)
        dead = [op.op_id for op in store.queue.pending() if str(op.item_id).startswith("poison")]
        store.queue.nack(dead, "rejected: field 'text' is too long", kind=ErrorKind.PERMANENT)
        store.attach("q0", b"\xff\xd8" + b"x" * 48_000, name="photo.jpg")

    async def run_jobs() -> None:
        job = JobDefinition(
            id="app.cleanup",
            name="Cache cleanup",
            description="Removes cached files older than a week.",
            schedule=PeriodicSchedule(interval=timedelta(hours=1)),
            constraints=JobConstraints(battery_not_low=True),
            callback=_cleanup,
        )
        with NexusStore(path, model=Note, backend=MemoryBackend()) as store:
            service = WorkManagerSyncService(
                store, config=BackgroundSyncConfig(), device=SimulatedDevice()
            )
            service.register_job(job)
            async with service:
                with anyio.fail_after(10):
                    while not [r for r in await service.job_history("app.cleanup") if r.ended_at]:
                        await service.settle()
                await service.cancel_sync()

    anyio.run(run_jobs)
    with NexusStore(path, model=Note) as store, store.database.transaction() as conn:
        Quarantine.ensure_schema(conn)
        change = Change(
            collection="note", item_id="odd", version=7, data={"id": "odd", "text": [1]}
        )
        Quarantine.keep(conn, change, "text: Input should be a valid string", "shape", time.time())


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    """A populated store file."""
    path = tmp_path / "app.db"
    # Playwright's sync API runs an event loop in this thread: fill the file in another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_populate, path).result(timeout=60)
    return path


@pytest.fixture
def dashboard_url(store_file: Path) -> Iterator[str]:
    """A real `nexus-store dashboard` process on the file; its printed URL."""
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "dashboard", "--db", str(store_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NEXUS_STORE_TOKEN": ""},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        assert found, f"the dashboard printed {line!r}"
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()


def _live(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)


def test_page_shows_the_file_and_is_live(
    page: Page, dashboard_url: str, store_file: Path, screenshots: Path
) -> None:
    """The page loads nothing from elsewhere (works offline); it shows the queue by
    priority, dead letters, quarantine, jobs and runs; a save by another process appears
    within a second; on a phone-sized window nothing scrolls sideways; screenshots."""
    page.set_viewport_size({"width": 1280, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    _live(page, dashboard_url)
    origin = dashboard_url.split("/?", maxsplit=1)[0]
    assert asked, "the page made no requests"
    assert all(url.startswith(origin + "/") for url in asked), asked  # nothing from elsewhere
    expect(page.locator('#queue tr[data-priority="CRITICAL"] td').nth(1)).to_have_text("1")
    expect(page.locator("#dead tbody tr")).to_have_count(2)
    expect(page.locator("#dead")).to_contain_text("too long")
    expect(page.locator("#quarantine")).to_contain_text("valid string")
    expect(page.locator('#jobs tr[data-job="app.cleanup"]')).to_contain_text("Cache cleanup")
    expect(page.locator("#runs")).to_contain_text("app.cleanup")
    expect(page.locator("#transfers")).to_contain_text("photo.jpg")
    expect(page.locator("#transfers")).to_contain_text("0 / 48002")
    before = page.locator("#pending").inner_text()
    saver = (
        "from pydantic import BaseModel\n"
        "from nexus_store import NexusStore\n"
        "class Note(BaseModel):\n    id: str\n    text: str = ''\n"
        f"s = NexusStore({str(store_file)!r}, model=Note)\n"
        "s.save(Note(id='from-another-process'))\ns.close()\n"
    )
    subprocess.run([sys.executable, "-c", saver], check=True, timeout=60)
    saved = time.monotonic()
    expect(page.locator("#pending")).to_have_text(str(int(before) + 1), timeout=1000)
    assert time.monotonic() - saved < 1.0
    page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
    page.locator('button[data-history="app.cleanup"]').click()
    expect(page.locator("#history")).to_contain_text("removed 3 cached files")
    page.set_viewport_size({"width": 390, "height": 844})
    wide = "document.documentElement.scrollWidth"
    assert page.evaluate(wide) <= 390, "the page scrolls sideways on a phone"
    page.screenshot(path=str(screenshots / "dashboard-phone.png"), full_page=True)


def test_every_control_changes_the_file(page: Page, dashboard_url: str, store_file: Path) -> None:
    """Disable, enable and run a job; retry and discard a dead letter; retry and discard a
    quarantined change: each button's effect is in the file."""
    _live(page, dashboard_url)
    with NexusStore(store_file, model=Note) as store:
        jobs = JobTable(store.database)
        row = page.locator('#jobs tr[data-job="app.cleanup"]')
        row.get_by_role("button", name="Disable").click()
        # the "on" cell, not the row: "Run now" contains "no" before the click lands
        expect(row.locator("td").nth(1)).to_have_text("no")
        assert not jobs.enabled("app.cleanup")
        row.get_by_role("button", name="Enable").click()
        expect(row.get_by_role("button", name="Disable")).to_be_visible()
        assert jobs.enabled("app.cleanup")
        row.get_by_role("button", name="Run now").click()
        expect(row).to_contain_text("run asked")
        assert jobs.row("app.cleanup").run_requested_at is not None  # type: ignore[union-attr]

        dead = {str(op.item_id): op.op_id for op in store.queue.dead()}
        page.locator(f'#dead tr[data-op="{dead["poison-1"]}"]').get_by_role(
            "button", name="Retry"
        ).click()
        expect(page.locator("#dead tbody tr")).to_have_count(1)
        assert store.is_pending("poison-1")
        page.locator(f'#dead tr[data-op="{dead["poison-2"]}"]').get_by_role(
            "button", name="Discard"
        ).click()
        expect(page.locator("#dead")).to_contain_text("no dead letters")
        assert store.queue.dead() == []
        assert not store.is_pending("poison-2")

        page.locator("#quarantine").get_by_role("button", name="Retry").click()
        expect(page.locator("#toast")).to_contain_text("still does not fit")
        assert len(store.quarantined()) == 1
        page.locator("#quarantine").get_by_role("button", name="Discard").click()
        expect(page.locator("#quarantine")).to_contain_text("nothing quarantined")
        assert store.quarantined() == []


def test_the_page_needs_its_token(page: Page, dashboard_url: str) -> None:
    """Without the token from the printed URL the page and its JSON answer 403."""
    bare = dashboard_url.split("?", maxsplit=1)[0]
    response = page.goto(bare)
    assert response is not None
    assert response.status == 403
    answer = page.request.get(bare + "api/state?token=wrong")
    assert answer.status == 403
    schema = page.request.get(bare + "openapi.json").json()
    assert "/api/state" in schema["paths"]
    assert "DashboardState" in schema["components"]["schemas"]
