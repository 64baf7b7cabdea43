"""What a program forgot to close is closed for it, with a ``ResourceWarning``, like a file.

A store, a backend with connections, or a background sync thread that is still open when
it is garbage collected, or when the interpreter exits, is closed here and reported with
a ``ResourceWarning`` (shown under ``-W default`` or ``-X dev``, an error under
``-W error``). Nothing is left to interpreter finalization: by then the threads that run
our event loops can no longer run, and waiting for them would hang the exit forever.

At exit (an :mod:`atexit` handler, which runs while threads still work) the resources are
closed newest first, then those marked ``last`` (the background event loop they use).
Every closer bounds its own waits, so exit stays prompt even when a remote hangs.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Tracked", "close_open", "mark_loop_thread", "track"]

_lock = threading.Lock()
_serial = itertools.count()
_open: dict[int, _Entry] = {}
# Threads that run an event loop: a closer that waits for that loop must not run there.
_loop_threads: set[int] = set()


@dataclass(frozen=True)
class _Entry:
    close: Callable[[], None]
    description: str
    warn: bool
    last: bool


class Tracked:
    """The registration of one open resource (see :func:`track`)."""

    def __init__(self, key: int, finalizer: weakref.finalize[..., object]) -> None:
        self._key = key
        self._finalizer = finalizer

    def untrack(self) -> bool:
        """Forget the resource because its owner closes it now.

        Returns:
            True the first time (the caller closes it); False if it was already closed
            or is being closed here.
        """
        self._finalizer.detach()
        with _lock:
            return _open.pop(self._key, None) is not None


def track(
    resource: object,
    close: Callable[[], None],
    description: str,
    *,
    warn: bool = True,
    last: bool = False,
) -> Tracked:
    """Close ``resource`` with ``close`` if it is collected or still open at exit.

    Args:
        resource: the object the program holds (it is only weakly referenced).
        close: closes what ``resource`` holds; must not refer to ``resource`` itself.
        description: how the warning names it, e.g. ``"NexusStore('app.db')"``.
        warn: report it with a ``ResourceWarning`` (False for our own infrastructure).
        last: close it after every other resource at exit.
    """
    key = next(_serial)
    with _lock:
        _open[key] = _Entry(close, description, warn, last)
    finalizer = weakref.finalize(resource, _collected, key)
    finalizer.atexit = False  # exit is handled by _close_all_at_exit, in our order
    return Tracked(key, finalizer)


def mark_loop_thread(ident: int, running: bool) -> None:
    """Tell the registry that thread ``ident`` runs (or no longer runs) an event loop."""
    with _lock:
        if running:
            _loop_threads.add(ident)
        else:
            _loop_threads.discard(ident)


def _collected(key: int) -> None:
    with _lock:
        entry = _open.pop(key, None)
        on_loop = threading.get_ident() in _loop_threads
    if entry is None:
        return
    if on_loop:
        # Collected on an event loop's thread: closing may wait for that very loop.
        threading.Thread(target=_finish, args=(entry, "when collected"), daemon=True).start()
    else:
        _finish(entry, "when collected")


def _finish(entry: _Entry, when: str) -> None:
    """Close one resource, then warn (an error under ``-W error``: raised after closing)."""
    try:
        entry.close()
    finally:
        if entry.warn:
            # Like an unclosed file's warning, it has no line of the program to point at.
            warnings.warn_explicit(
                f"{entry.description} was never closed; it was closed {when}",
                ResourceWarning,
                filename="nexus_store",
                lineno=0,
                module="nexus_store",
            )


def close_open(*, warn: bool = True, keep_last: bool = False) -> int:
    """Close every resource still open, newest first (then those marked ``last``).

    Args:
        warn: report each with a ``ResourceWarning`` (as at exit).
        keep_last: leave the ``last`` ones (the background loop) running.

    Returns:
        How many were closed.

    Raises:
        Exception: the first error a closer raised (after closing the rest).
    """
    with _lock:
        entries = sorted(_open.items(), key=lambda kv: (kv[1].last, -kv[0]))
        chosen = [(key, entry) for key, entry in entries if not (keep_last and entry.last)]
        for key, _ in chosen:
            del _open[key]
    first_error: BaseException | None = None
    for _, entry in chosen:
        try:
            if warn:
                _finish(entry, "at interpreter exit")
            else:
                entry.close()
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return len(chosen)


def _close_all_at_exit() -> None:
    close_open()


atexit.register(_close_all_at_exit)
