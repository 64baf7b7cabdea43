"""The collector pause: nests, overlaps across threads, and restores what it found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from nexus_store import set_gc_pause
from nexus_store._gc import collector_paused, gc_pause_enabled


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    """Each test starts with the collector on and pausing allowed, and leaves both as found."""
    gc.enable()
    previous = set_gc_pause(True)
    yield
    set_gc_pause(previous)
    gc.enable()


def test_pausing_is_off_unless_turned_on() -> None:
    """Library use: sections do not touch the collector until set_gc_pause(True)."""
    set_gc_pause(False)
    assert not gc_pause_enabled()
    with collector_paused():
        assert gc.isenabled()
    assert set_gc_pause(True) is False
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_pausing_is_off_by_default_and_on_in_the_worker_and_server() -> None:
    """A fresh process has it off; `nexus-store serve` and `worker` turn it on."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = "import nexus_store._gc as g; print(g.gc_pause_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parents[1] / "nexus_store"
    for module in ("cli/_worker.py", "server/_run.py"):
        assert "set_gc_pause(True)" in (root / module).read_text(encoding="utf-8")


def test_the_collector_is_paused_inside_and_resumes_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer section still runs
    assert gc.isenabled()


def test_it_resumes_after_an_error() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_sections_in_threads_resume_once_the_last_ends() -> None:
    """The first section to end does not resume collection under the other."""
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with collector_paused():
            inside.set()
            assert release.wait(10)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with collector_paused():
        pass
    assert not gc.isenabled()  # the other thread's section is still open
    release.set()
    thread.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_as_a_decorator_each_call_pauses_afresh() -> None:
    @collector_paused()
    def inside() -> bool:
        return gc.isenabled()

    assert (inside(), inside()) == (False, False)
    assert gc.isenabled()
