"""Waking on another process's commits: the database's ``-wal`` file, watched by the kernel.

:class:`WalChangeSource` yields once per batch of writes to the database or its WAL file.
On Linux it asks the kernel directly (inotify, through ``ctypes``): the watcher waits on a
file descriptor in the event loop, so it costs nothing while nothing is written and wakes
within microseconds of a write; its settle looks (below) are timed by a ``timerfd`` on
the same descriptor, to the microsecond. Elsewhere (or where inotify cannot be set up) it uses
``watchfiles``, whose watcher thread polls its queue every ``step_ms`` milliseconds (on 2
shared cores: 10 ms ~0.6 % of a core idle, 50 ms ~0.25 %).

A commit writes several frames to the WAL; each write may wake the watcher. A wake only
makes the service look at the queue again (cheap, and coalesced while a look is under
way), so waking early on the first frame of a commit is harmless. The commit is visible
only once the writer has updated the WAL index (``-shm``, written through memory, no
event): inotify wakes once more at each of :data:`SETTLE_WAKES` after the last write, and
a wake is passed on only when SQLite says another connection committed (``PRAGMA
data_version`` on a connection of the watcher's own), so a commit wakes the service once,
not once per write.

A process that writes the file itself (the worker: its drain lease, acks, scheduler
records) passes its :class:`~nexus_store._database.Database` as ``own``: the count is then
read on that connection, whose own commits never change it, so the process is woken by the
others' commits only, not by its own bookkeeping (an idle worker renewing its lease stays
asleep). Its own writes still raise inotify events; one that comes while it writes (or just
after) is taken for its own, and brings only the looks of :data:`OWN_SETTLE_WAKES` (for a
commit of another process in the same moment), not the quick series a commit of another
process gets: a sync run, which commits every few milliseconds, is not slowed by looks that
find nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sqlite3
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from .._database import Database

__all__ = [
    "OWN_SETTLE_WAKES",
    "SEEN_SETTLE",
    "SETTLE_WAKES",
    "WalChangeSource",
    "after_seen",
    "inotify_available",
    "settle_looks",
]

SETTLE_WAKES = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.008, 0.016, 0.05, 0.1)
"""Seconds of quiet at which inotify looks once more after a write (each after the last).

A commit becomes visible to readers when the writer updates the WAL index in the
``-shm`` file, which it maps into memory: that write raises no inotify event, and it
comes after the WAL's frames (and, at ``durability="full"``, after their fsync, commonly
0.5 to 2 ms). A look woken by the frames may run before it and see the old snapshot;
these looks, half a millisecond apart at first, see the commit soon after it lands,
whatever the disk's fsync time (idle: nothing; each look reads one pragma). Once a look
sees the commit, the looks due within :data:`SEEN_SETTLE` are dropped (see
:func:`after_seen`)."""

SEEN_SETTLE = 0.016
"""After a settle look saw a commit: the looks due within this many seconds are dropped.

Every write drained before that look belongs to a commit that has landed: the next
commit (of any process) can only write its frames once the previous one has updated the
index, and those frames raise events of their own, which start a series of their own. The
later looks stay as a margin."""

OWN_SETTLE_WAKES = (0.016, 0.1)
"""The looks after a write of the watching process itself (see :class:`WalChangeSource`'s
``own``): its own commits wake nobody, so only a commit of another process that came in
the same moment is looked for, at a pace that costs nothing while the process writes
(a sync run commits every few milliseconds)."""

OWN_WRITE_WINDOW = 0.005
"""Seconds after the watching process's own write within which a write to the file is
taken for that one (its events reach the watcher a little after the write)."""

logger = logging.getLogger("nexus_store.sync.worker")

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_ONLYDIR = 0x01000000
_EVENT = struct.Struct("iIII")
_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") and hasattr(libc, "timerfd_create") else None


def inotify_available() -> bool:
    """Whether this machine offers inotify (Linux)."""
    return _libc() is not None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Inotify:
    """One inotify descriptor watching one folder for writes to some of its files, and a
    timer (``timerfd``), both behind one descriptor (``epoll``) the event loop waits on.

    The timer keeps the settle looks on time: the event loop's own timers wake on whole
    milliseconds (its ``epoll`` waits take milliseconds, rounded up), a timerfd to the
    microsecond.
    """

    def __init__(self, folder: Path, names: set[str]) -> None:
        libc = _libc()
        if libc is None:
            raise OSError("inotify is not available")
        self._libc = libc
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._closing: list[int] = [fd]
        try:
            mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_ONLYDIR
            if libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {folder}")
            timer = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if timer < 0:
                raise OSError(ctypes.get_errno(), "timerfd_create failed")
            self._closing.append(timer)
            self._poll = select.epoll()
            self._poll.register(fd, select.EPOLLIN)
            self._poll.register(timer, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        self._inotify, self._timer = fd, timer
        self.fd = self._poll.fileno()
        self._names = {os.fsencode(name) for name in names}

    def arm(self, when: float | None) -> None:
        """Make the descriptor readable at ``when`` (``time.monotonic()``; ``None``: never)."""
        spec = _Itimerspec()
        if when is not None:
            seconds = max(when, 1e-9)  # zero would disarm; a time past fires at once
            spec.it_value.tv_sec = int(seconds)
            spec.it_value.tv_nsec = int((seconds - int(seconds)) * 1e9)
        if self._libc.timerfd_settime(self._timer, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def fired(self) -> bool:
        """Whether the timer went off (since it was last armed)."""
        try:
            return bool(os.read(self._timer, 8))
        except BlockingIOError:
            return False

    def drain(self) -> bool:
        """Read every pending event; whether one concerned a watched file."""
        hit = False
        while True:
            try:
                data = os.read(self._inotify, 64 * 1024)
            except BlockingIOError:
                return hit
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                hit = hit or name in self._names
                offset += _EVENT.size + length

    def close(self) -> None:
        poll = getattr(self, "_poll", None)
        if poll is not None:
            poll.close()
        for fd in self._closing:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._closing = []


class _CommitCounter:
    """Whether another connection committed since the last look: SQLite's own
    ``PRAGMA data_version``, read on a connection of its own.

    It changes exactly when a commit of another connection becomes visible, so a wake
    whose count did not change brings nothing to look at: the writer's commit is still
    under way (a settle wake will see it) or the write was not a commit. The file is only
    ever read through SQLite: reading ``-shm`` or the database with ``open()`` and closing
    that descriptor would drop every POSIX lock this process holds on it (see
    :mod:`nexus_store._database`). The pragma reads the WAL index SQLite already maps: no
    disk read, no lock held between looks.
    """

    def __init__(self, path: Path) -> None:
        self._uri = path.absolute().as_uri() + "?mode=rw"
        self._conn: sqlite3.Connection | None = None
        self._last: int | None = self._read()

    def _read(self) -> int | None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._uri, uri=True, timeout=0.1, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
                self._conn.execute("PRAGMA query_only = ON")
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self.close()
            return None
        return int(row[0])

    def changed(self) -> bool | None:
        """Whether the count differs from the last reading (unreadable: assume so;
        ``None``: cannot tell now, look again later)."""
        now = self._read()
        if now is None:
            self._last = None
            return True
        if now == self._last:
            return False
        self._last = now
        return True

    def close(self) -> None:
        """Close the connection (through SQLite: other connections keep their locks)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class _OwnCommitCounter:
    """SQLite's commit count, as :class:`_CommitCounter` reads it, but on the watching
    process's own connection (``own``): commits made on that connection do not change it,
    so they wake nobody.

    The connection is shared with the process's threads: the count is read only when its
    lock is free at once (the event loop never waits for it). Busy means one of our own
    statements is under way: the look cannot tell (``None``) and is left to the next
    settle wake; the last one that still cannot tell counts as a change (a wake too many,
    never one too few).
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._last: int | None = self._value() if database.lock.acquire(blocking=False) else None

    def _value(self) -> int | None:
        """The count, the lock being held by the caller (released here)."""
        try:
            if self._database.closed:
                return None
            return int(self._database.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            self._database.lock.release()

    def changed(self) -> bool | None:
        """Whether another connection committed since the last look (see the class)."""
        if not self._database.lock.acquire(blocking=False):
            return None
        now = self._value()
        if now is None or now != self._last:
            self._last = now
            return True
        return False

    def own_write(self) -> bool:
        """Whether the owner is writing, or wrote within :data:`OWN_WRITE_WINDOW`."""
        database = self._database
        return database._depth > 0 or time.monotonic() - database.wrote_at < OWN_WRITE_WINDOW

    def close(self) -> None:
        """Nothing to close: the connection is the owner's."""


def after_seen(due: list[float], now: float) -> list[float]:
    """The looks still to make once a settle look at ``now`` saw a commit (see
    :data:`SEEN_SETTLE`)."""
    return [when for when in due if when >= now + SEEN_SETTLE]


def settle_looks(due: list[float], own_write: bool, now: float) -> list[float]:
    """When to look after a write at ``now``, the looks ``due`` before it: :data:`SETTLE_WAKES`
    from now; after the watching process's own write, :data:`OWN_SETTLE_WAKES` from now,
    and the next look due if it comes sooner (so that, however fast its own writes follow
    each other, the watcher still looks at least every ``OWN_SETTLE_WAKES[0]``: a commit
    of another process is never left for long)."""
    if not own_write:
        return [now + wait for wait in SETTLE_WAKES]
    sooner = due[:1] if due and due[0] < now + OWN_SETTLE_WAKES[0] else []
    return sooner + [now + wait for wait in OWN_SETTLE_WAKES]


class WalChangeSource:
    """Wakes on commits of any process to the database file (see the module docstring).

    Args:
        path: the database file.
        step_ms: the ``watchfiles`` fallback's polling step (wake-up latency vs idle CPU).
        debounce_ms: the ``watchfiles`` fallback's longest grouping of a stream of changes.
        use_inotify: ``False`` to use ``watchfiles`` even where inotify exists.
        own: the watching process's own connection to the file, whose commits are not to
            wake it (see the module docstring).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        step_ms: int = 10,
        debounce_ms: int = 50,
        use_inotify: bool = True,
        own: Database | None = None,
    ) -> None:
        self._own = own
        self._path = Path(path).resolve()
        self._names = {self._path.name, self._path.name + "-wal"}
        self._step = step_ms
        self._debounce = debounce_ms
        self._use_inotify = use_inotify
        self._stop = anyio.Event()

    def _interesting(self, _change: object, path: str) -> bool:
        return Path(path).name in self._names

    async def changes(self) -> AsyncIterator[None]:
        """Yield once per batch of changes to the database or its WAL."""
        watcher: _Inotify | None = None
        if self._use_inotify:
            try:
                watcher = _Inotify(self._path.parent, self._names)
            except OSError as exc:
                logger.info("inotify unavailable (%s); watching with watchfiles", exc)
        if watcher is None:
            async for _ in self._watchfiles():
                yield None
            return
        own = None if self._own is None else _OwnCommitCounter(self._own)
        index = _CommitCounter(self._path) if own is None else own
        try:
            looks: list[float] = []  # when the settle looks are due (time.monotonic())
            while not self._stop.is_set():
                watcher.arm(looks[0] if looks else None)
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    await anyio.wait_readable(watcher.fd)
                if self._stop.is_set():
                    return
                fired = watcher.fired()
                settling = False
                if watcher.drain():
                    ours = own is not None and own.own_write()
                    looks = settle_looks(looks, ours, time.monotonic())
                elif fired and looks:  # quiet since the last write: look once more
                    looks.pop(0)
                    settling = True
                else:
                    continue
                verdict = index.changed()
                if verdict and settling:
                    looks = after_seen(looks, time.monotonic())
                if verdict or (verdict is None and not looks):
                    yield None
        finally:
            index.close()
            watcher.close()

    async def _watchfiles(self) -> AsyncIterator[None]:
        import watchfiles  # noqa: PLC0415 - optional to import nexus_store itself

        async for _ in watchfiles.awatch(
            self._path.parent,
            watch_filter=self._interesting,
            debounce=self._debounce,
            step=self._step,
            stop_event=self._stop,
            # A cancellation waits for the watcher thread: without close() first, this
            # bounds the wait (the thread returns once a second when nothing changes).
            rust_timeout=1000,
            recursive=False,
        ):
            yield None

    _scope: anyio.CancelScope | None = None

    def close(self) -> None:
        """Stop watching (the iterator ends)."""
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()
