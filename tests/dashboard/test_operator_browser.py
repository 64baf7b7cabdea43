"""The sync server's operator page in a real browser (Debian's Chromium, Playwright)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from pydantic import BaseModel

from nexus_store import NexusStore
from nexus_store.backends import HttpBackend

LAUNCHER = "from nexus_store.cli import main; main()"


class Note(BaseModel):
    id: str
    text: str = ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `nexus-store serve`; its base URL and the operator page's URL it printed.
    Stopped with the page open, it says nothing but its own lines (no traceback)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCHER,
            "serve",
            "--port",
            "0",
            "--database",
            f"sqlite:///{tmp_path}/server.db",
            "--token",
            "tok-a=alpha",
            "--token",
            "tok-b=beta",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = process.stdout.readline().rsplit(" ", 1)[-1].strip()
        operator = re.search(r"(http://\S+)", process.stdout.readline())
        assert operator, "serve printed no operator page"
        yield base, operator.group(1)
    finally:
        process.terminate()  # the page is still open: its stream must not hold the stop up
        process.wait(20)
        said = process.stdout.read() if process.stdout is not None else ""
        if process.stdout is not None:
            process.stdout.close()
    assert "Traceback" not in said, said


def _sync(base: str, token: str, path: Path, count: int) -> None:
    with NexusStore(path, model=Note, backend=HttpBackend(base, token=token)) as store:
        for n in range(count):
            store.save(Note(id=f"n{n}"))
        store.sync()


def test_operator_page_counts_tenants_live(
    page: Page, server: tuple[str, str], tmp_path: Path, screenshots: Path
) -> None:
    """Pushes of two tenants show up on the open page (live), with per-tenant rows; the
    page needs its token; the JSON behind it is in the OpenAPI document."""
    base, url = server
    page.set_viewport_size({"width": 1100, "height": 600})
    page.goto(url)
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        pool.submit(_sync, base, "tok-a", tmp_path / "a.db", 5).result(timeout=60)
        pool.submit(_sync, base, "tok-b", tmp_path / "b.db", 2).result(timeout=60)
    expect(page.locator("#ops_accepted")).to_have_text("7", timeout=5000)
    expect(page.locator("#tenants")).to_contain_text("alpha")
    expect(page.locator("#tenants")).to_contain_text("beta")
    assert int(page.locator("#pulls").inner_text()) >= 2
    page.screenshot(path=str(screenshots / "operator.png"), full_page=True)
    assert httpx.get(url.split("?")[0] + "?token=wrong").status_code == 403
    stats = httpx.get(url.replace("/operator?", "/operator/stats?")).json()
    assert stats["ops_accepted"] == 7
    schema = httpx.get(base + "/openapi.json").json()
    assert "/operator/stats" in schema["paths"]
    assert "OperatorSnapshot" in schema["components"]["schemas"]
