"""The collector pause: nests, overlaps across threads, and restores what it found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from nexus_store._gc import collector_paused


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    """Each test starts with the collector on and leaves it on."""
    gc.enable()
    yield
    gc.enable()


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
