"""Watching local changes: a change log in the database and streams that follow it.

While at least one :class:`ChangeStream` is open on a database file (in any process),
every local write (and every remote change applied by a sync run) appends a row to
``nx_changes`` in the same transaction as the write. A stream registers itself in
``nx_watchers`` when it opens, inside a write transaction, so every commit after that
sees it and is logged; it removes itself when closed. With no stream open, writes skip
the log (one cheap read of the small ``nx_watchers`` table decides): a save then writes
one B-tree page fewer. Rows left by a process that died without closing its streams
are removed when the next stream or store opens on the file (their process id no
longer runs); until then they only make writes log as if someone watched.

A :class:`ChangeStream` reads the rows after the last one it returned. It learns of new
rows in two ways:

- writes through the same :class:`~nexus_store._database.Database` object wake it at once
  (a :class:`ChangeSignal` shared per database object);
- commits by other connections, in this process or another one, change SQLite's
  ``PRAGMA data_version``, which the stream polls every ``poll_interval`` seconds (a
  cheap read that touches no table).

The log is bounded: it keeps the last :data:`~._changelog.CHANGE_LOG_KEEP` rows. A stream that falls
further behind than that skips what was pruned and counts it in
:attr:`ChangeStream.skipped`. ``since=`` resumes after a seq of an earlier stream; changes
committed while no stream was open anywhere were not logged and are not replayed.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread

from ._changelog import ChangeLog, LocalChange
from ._database import Database
from ._exceptions import DatabaseError, StoreClosedError

__all__ = ["ChangeSignal", "ChangeStream", "signal_for"]


class ChangeSignal:
    """Wakes streams when a write through one database object commits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self._count_lock = threading.Lock()
        self.counter = 0
        self.orphans: collections.deque[int] = collections.deque()
        """Registrations of streams collected while the database was busy (removed by the
        next stream that opens on the database object)."""

    def notify(self) -> None:
        """Tell every waiting stream that something committed."""
        with self._count_lock:
            self.counter += 1
        # The lock is only taken when someone waits: a save with no watcher pays nothing.
        # A waiter registers before it compares the counter, so no wake-up is lost.
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Wait until the counter moves past ``seen``, or ``timeout`` seconds pass."""
        with self._cond:
            self._waiting += 1
            try:
                if self.counter == seen:
                    self._cond.wait(timeout)
            finally:
                self._waiting -= 1


_signals: weakref.WeakKeyDictionary[Database, ChangeSignal] = weakref.WeakKeyDictionary()
_signals_lock = threading.Lock()


def signal_for(database: Database) -> ChangeSignal:
    """The one signal shared by every store using this database object."""
    with _signals_lock:
        signal = _signals.get(database)
        if signal is None:
            signal = _signals[database] = ChangeSignal()
        return signal


def _unregister(database: Database, watcher_id: int) -> None:
    """Remove a stream's registration, if its database is still open."""
    try:
        with database.transaction() as conn:
            ChangeLog.unregister(conn, watcher_id)
    except (StoreClosedError, DatabaseError):
        pass  # closed: the registration goes with the process (reaped by the next opener)


def _collected(database: Database, signal: ChangeSignal, watcher_id: int) -> None:
    """A stream was garbage-collected unclosed: unregister it without ever blocking.

    The collector may run in any thread, at any allocation, even one made while a lock
    is held that the database's holder waits for: so the database lock is only tried.
    """
    if database.lock.acquire(blocking=False):
        try:
            _unregister(database, watcher_id)
        finally:
            database.lock.release()
    else:
        signal.orphans.append(watcher_id)


class ChangeStream:
    """Committed changes of a collection, as an iterator and as an async iterator.

    Iteration waits for the next change and ends when the stream (or its store) is closed.
    :meth:`get` waits at most ``timeout`` seconds. At most ``batch`` changes are buffered.

    Args:
        database: the store's database.
        collection: the collection to follow (``None``: every collection in the file).
        since: start after this seq (``None``: only changes committed from now on).
        poll_interval: how often, in seconds, to look for commits by other connections.
        batch: how many changes to read at a time.
    """

    def __init__(
        self,
        database: Database,
        collection: str | None,
        *,
        since: int | None = None,
        poll_interval: float = 0.05,
        batch: int = 256,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._db = database
        self._collection = collection
        self._signal = signal_for(database)
        self._poll_interval = poll_interval
        self._batch = batch
        self._buffer: collections.deque[LocalChange] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self.skipped = 0
        """Changes this stream missed because the log pruned them before they were read."""
        self._seen_signal = -1
        self._seen_version = -1
        with database.transaction() as conn:
            while self._signal.orphans:
                ChangeLog.unregister(conn, self._signal.orphans.popleft())
            watcher_id, newest = ChangeLog.register(conn)
        self._watcher_id = watcher_id
        self._last = newest if since is None else since
        # Unregistered on close, or when the stream is collected without being closed.
        self._finalizer = weakref.finalize(self, _collected, database, self._signal, watcher_id)

    @property
    def closed(self) -> bool:
        """Whether the stream was closed."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """The seq of the last change read from the log (pass it as ``since`` to resume)."""
        return self._last

    def close(self) -> None:
        """Stop the stream; waiting readers return. Idempotent."""
        self._closed = True
        if self._finalizer.detach() is not None:  # the first close
            _unregister(self._db, self._watcher_id)
        self._signal.notify()

    # -- reading -------------------------------------------------------------------------

    def _refill(self) -> bool:
        """Read new changes into the buffer if anything committed; True if the buffer has some."""
        with self._lock:
            if self._buffer:
                return True
            if self._closed:
                return False
            token = self._signal.counter
            try:
                version = self._db.data_version()
                if token == self._seen_signal and version == self._seen_version:
                    return False
                with self._db.reading() as conn:
                    changes, first = ChangeLog.read(conn, self._collection, self._last, self._batch)
            except StoreClosedError:
                self._closed = True
                return False
            if first > self._last + 1:
                self.skipped += first - self._last - 1
            if len(changes) < self._batch:
                # Everything up to now was read; only a new commit can bring more.
                self._seen_signal, self._seen_version = token, version
            if changes:
                self._last = changes[-1].seq
                self._buffer.extend(changes)
            return bool(self._buffer)

    def _pop(self) -> LocalChange | None:
        with self._lock:
            return self._buffer.popleft() if self._buffer else None

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change to be buffered (or the stream closed)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self._signal.counter
            if self._refill() or self._closed:
                return bool(self._buffer)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._signal.wait(seen, min(self._poll_interval, remaining))

    def get(self, timeout: float | None = None) -> LocalChange | None:
        """The next change, waiting at most ``timeout`` seconds (forever if None).

        Returns None on timeout or when the stream is closed.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            change = self._pop()
            if change is not None or self._closed:
                return change
            if deadline is None:
                self._wait(3600.0)
            elif not self._wait(max(0.0, deadline - time.monotonic())):
                return self._pop()

    def __iter__(self) -> Iterator[LocalChange]:
        return self

    def __next__(self) -> LocalChange:
        change = self.get()
        if change is None:
            raise StopIteration
        return change

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LocalChange:
        while True:
            change = self._pop()
            if change is not None:
                return change
            if self._closed:
                raise StopAsyncIteration
            # The worker thread only fills the buffer; popping happens here, so a wait
            # abandoned by cancellation never swallows a change.
            await anyio.to_thread.run_sync(self._wait, self._poll_interval, abandon_on_cancel=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"ChangeStream(collection={self._collection!r}, last_seq={self._last}, {state})"
