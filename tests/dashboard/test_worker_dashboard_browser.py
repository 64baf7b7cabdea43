"""`nexus-store dashboard --remote` (the worker with its page) in a real browser.

A real sync server process and a real worker process with its dashboard: the page shows
the worker holding the file's drain, the sync status as it changes, and a save made by
another process queued, pushed and gone from the queue, with the run in the last runs.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.testing import ServerProcess

LAUNCHER = "from nexus_store.cli import main; main()"
TOKEN = "tok-dash"


class Note(BaseModel):
    id: str
    text: str = ""


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def _next_line(lines: queue.Queue[str], pattern: str) -> str:
    """The worker's next log line matching ``pattern`` (bounded in lines and time)."""
    seen = []
    for _ in range(200):
        line = lines.get(timeout=30)
        if re.search(pattern, line):
            return line
        seen.append(line)
    raise AssertionError(f"no line matching {pattern!r} in {seen}")


@pytest.fixture
def worker_page(
    tmp_path: Path,
) -> Iterator[tuple[str, Path, queue.Queue[str], subprocess.Popen[str]]]:
    """A server, a store file with one queued save, and a worker serving its dashboard."""
    path = tmp_path / "app.db"
    with NexusStore(path, model=Note) as store:
        store.save(Note(id="before", text="queued before the worker started"))
    with ServerProcess(tokens={TOKEN: "dash"}) as server:
        command = [sys.executable, "-c", LAUNCHER, "dashboard", "--db", str(path)]
        process = subprocess.Popen(
            [*command, "--remote", server.base_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NEXUS_STORE_TOKEN": TOKEN},
        )
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            found = re.search(r"dashboard: (http://\S+)", _next_line(lines, "dashboard: http"))
            assert found is not None
            yield found.group(1), path, lines, process
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(20)
            reader.join(10)
            if process.stdout is not None:
                process.stdout.close()


def test_worker_page_shows_the_drain_live(
    page: Page, worker_page: tuple[str, Path, queue.Queue[str], subprocess.Popen[str]]
) -> None:
    """The worker's page names the drain's holder, empties the queue it pushes, shows a save
    by another process pushed within seconds and the sync's status changes; SIGTERM with
    the page open stops the worker cleanly (exit 0, no traceback)."""
    url, path, lines, process = worker_page
    page.goto(url)
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    expect(page.locator("#sync")).to_contain_text("pid", timeout=10_000)
    expect(page.locator("#pending")).to_have_text("0", timeout=10_000)
    _next_line(lines, r"pushed 1,")  # the run that pushed the save made before the start
    saver = (
        "from pydantic import BaseModel\n"
        "from nexus_store import NexusStore, SyncPriority\n"
        "class Note(BaseModel):\n    id: str\n    text: str = ''\n"
        f"s = NexusStore({str(path)!r}, model=Note)\n"
        "s.save(Note(id='from-the-app'), priority=SyncPriority.CRITICAL)\ns.close()\n"
    )
    subprocess.run([sys.executable, "-c", saver], check=True, timeout=60)
    _next_line(lines, r"pushed 1,")  # the CRITICAL save woke the worker at once
    expect(page.locator("#pending")).to_have_text("0", timeout=10_000)
    with NexusStore(path, model=Note) as store:
        assert not store.is_pending("from-the-app")
        assert not store.is_pending("before")
    expect(page.locator("#runs")).to_contain_text("success")
    rows = page.locator("#sync tbody tr")
    assert rows.count() >= 2, page.locator("#sync").inner_text()
    process.terminate()
    assert process.wait(20) == 0
    said = []
    while not lines.empty():
        said.append(lines.get_nowait())
    assert "Traceback" not in "".join(said), "".join(said)
    assert "the lease is released" in "".join(said)
