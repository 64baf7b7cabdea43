"""Pausing Python's cyclic garbage collector while a large message is turned into objects.

Decoding and validating a page of thousands of changes allocates tens of thousands of
containers that all stay alive until the page is used. CPython's collector counts those
allocations and runs full collections over every object of the process meanwhile, to
find no garbage: measured, that doubled the client's CPU time per pulled change. The
msgpack project gives the same advice for large messages. Nothing these sections make
is cyclic garbage, so nothing is left to collect; collection simply resumes after.

Two kinds of section, and a process-wide setting (:func:`set_gc_pause`):

- **Message sections** turn one received message into objects: a pulled page, a push's
  answer. Each is bounded by the size of one answer (``max_response_bytes``) and runs
  none of the application's code. They pause the collector **by default**
  (``"messages"``): a page of 5,000 changes holds collection off for a few milliseconds.
- **Bulk sections** build thousands of records from local queries, or run a whole push
  phase: longer, and sized by the application's data. They pause only with
  ``set_gc_pause(True)``, which ``nexus-store worker`` and ``nexus-store serve`` turn on
  for their own processes.

``set_gc_pause(False)`` turns both off. The collector is one per process, so a pause also
holds off the collections the application's other threads would trigger meanwhile (their
garbage is collected after the section, not lost, but their memory can grow for its
length).

The pause is thread-safe: sections may nest and overlap across threads; the collector is
enabled again when the last one ends, also when it ends with an exception, and only if it
was enabled when the first began (an application that disabled it keeps it so).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypeAlias

__all__ = ["GcPause", "collector_paused", "gc_pause_enabled", "set_gc_pause"]

GcPause: TypeAlias = bool | Literal["messages"]
"""When sections pause the collector: always (``True``), never (``False``), or only while
a received message is decoded (``"messages"``, the default)."""

_lock = threading.Lock()
_depth = 0
_resume = False
_setting: GcPause = "messages"


def set_gc_pause(enabled: GcPause) -> GcPause:
    """Choose when the library pauses the process's cyclic garbage collector.

    Decoding a page of thousands of pulled changes (or building thousands of records
    from a query) makes CPython run full collections over every object of the process to
    find no garbage; pausing the collector for those sections made them up to twice as
    fast. The pause is process-wide, so by default only the short sections that decode
    one received message (a pulled page, a push's answer) pause it. ``True`` also pauses
    bulk sections (local reads of thousands of records, a sync run's push phase): the
    worker and the server turn that on; a library user may, if pauses of collection in
    the app's other threads for the length of such a section are acceptable.

    Args:
        enabled: ``True`` (every section), ``"messages"`` (the default: decoding a
            received message only) or ``False`` (never).

    Returns:
        The previous setting.

    Raises:
        ValueError: another value.
    """
    global _setting
    if not (type(enabled) is bool or enabled == "messages"):
        raise ValueError(f"set_gc_pause takes True, False or 'messages', not {enabled!r}")
    previous, _setting = _setting, enabled
    return previous


def gc_pause_enabled() -> bool:
    """Whether bulk sections pause the collector (see :func:`set_gc_pause`)."""
    return _setting is True


@contextmanager
def collector_paused(*, message: bool = False) -> Iterator[None]:
    """Run the block with the cyclic garbage collector paused, if :func:`set_gc_pause`
    allows it for this kind of section (see the module notes); otherwise just run it.

    Args:
        message: the block decodes one received message (bounded by its size, none of
            the application's code inside): paused unless the setting is ``False``.
            Otherwise a bulk section: paused only with the setting ``True``.
    """
    global _depth, _resume  # noqa: PLW0603 - one collector per process, one pause state
    if not (_setting is True or (message and _setting == "messages")):
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
