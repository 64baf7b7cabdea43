"""``nexus-store demo``, run as the README runs it: every claim holds, nothing is left running."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

_LAUNCHER = "from nexus_store.cli import main; main()"


def test_the_demo_verifies_its_story_and_leaves_nothing_running() -> None:
    """Offline saves, a real server, arrival by priority, a pulled edit, the background
    service (its adapter, its transitions, a CRITICAL save overtaking LOW ones): all checked."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, "demo", "--items", "400"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "adapter for this platform" in out
    assert "status transitions:" in out
    assert "RUNNING" in out
    assert "COMPLETED" in out
    for claim in (
        "offline saves are all queued",
        "CRITICAL arrived first, then HIGH, NORMAL, LOW",
        "the server-side edit reached the local store",
        "the CRITICAL save overtook the LOW saves queued before it",
    ):
        assert claim in out
    assert " NO " not in out
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before  # the demo's server process is gone
