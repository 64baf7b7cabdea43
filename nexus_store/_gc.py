"""Pausing Python's cyclic garbage collector while a large message is turned into objects.

**An explicit option, off by default in library use** (:func:`set_gc_pause`): the
collector is one per process, so a pause also holds off collections that the host
application's own threads would trigger meanwhile (their garbage is collected after the
section, not lost, but their memory can grow for its length). ``nexus-store worker`` and
``nexus-store serve``, which own their process, turn it on; an app that wants the speed
calls ``nexus_store.set_gc_pause(True)``.

Decoding and validating a page of thousands of changes allocates tens of thousands of
containers that all stay alive until the page is used. CPython's collector counts those
allocations and runs full collections over every object of the process meanwhile, to
find no garbage: measured, that doubled the client's CPU time per pulled change. The
msgpack project gives the same advice for large messages. Nothing these sections make
is cyclic garbage, so nothing is left to collect; collection simply resumes after.

The pause is process-wide (so is the collector) and thread-safe: sections may nest and
overlap across threads; the collector is enabled again when the last one ends, and only
if it was enabled when the first began (an application that disabled it keeps it so).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused", "gc_pause_enabled", "set_gc_pause"]

_lock = threading.Lock()
_depth = 0
_resume = False
_enabled = False


def set_gc_pause(enabled: bool) -> bool:
    """Let bulk reads and sync runs pause the process's cyclic garbage collector.

    Decoding a page of thousands of pulled changes (or building thousands of records
    from a query) makes CPython run full collections over every object of the process to
    find no garbage; pausing the collector for those sections made them up to twice as
    fast. The pause is process-wide, so it is off unless the program turns it on: the
    worker and the server do; a library user may, if pauses of collection in the app's
    other threads for the length of such a section are acceptable.

    Args:
        enabled: pause during bulk sections (True) or never (False, the default).

    Returns:
        The previous setting.
    """
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def gc_pause_enabled() -> bool:
    """Whether bulk sections pause the collector (see :func:`set_gc_pause`)."""
    return _enabled


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector paused, if :func:`set_gc_pause`
    turned pausing on (see the module notes); otherwise just run it."""
    global _depth, _resume  # noqa: PLW0603 - one collector per process, one pause state
    if not _enabled:
        yield
        return
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
