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


def test_each_setting_pauses_its_sections() -> None:
    """The default pauses message sections only; True every section; False none."""
    for setting, message, bulk in (("messages", False, True), (True, False, False)):
        set_gc_pause(setting)
        with collector_paused(message=True):
            assert gc.isenabled() is message
        with collector_paused():
            assert gc.isenabled() is bulk
        assert gc.isenabled()
    assert set_gc_pause(False) is True
    assert not gc_pause_enabled()
    with collector_paused(message=True):
        assert gc.isenabled()
    with collector_paused():
        assert gc.isenabled()
    assert set_gc_pause("messages") is False


def test_only_the_three_settings_are_taken() -> None:
    """A typo or a truthy number is refused, not read as a setting."""
    for bad in ("message", "on", 1, None):
        with pytest.raises(ValueError, match="set_gc_pause"):
            set_gc_pause(bad)  # type: ignore[arg-type]
    assert gc_pause_enabled()  # unchanged (the fixture turned it on)


def test_message_sections_pause_by_default_bulk_ones_in_the_worker_and_server() -> None:
    """A fresh process pauses for decoding messages only; `nexus-store serve` and
    `worker` turn pausing on for every section."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import gc, nexus_store._gc as g\n"
        "with g.collector_paused(message=True): a = gc.isenabled()\n"
        "with g.collector_paused(): b = gc.isenabled()\n"
        "print(g.gc_pause_enabled(), a, b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False True"
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
    """A section that raises still resumes collection (both kinds)."""
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
    set_gc_pause("messages")
    with pytest.raises(RuntimeError), collector_paused(message=True):
        assert not gc.isenabled()
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
