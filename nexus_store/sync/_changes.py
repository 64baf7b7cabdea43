"""What wakes the background service after commits: a change source, and the commit watcher.

:class:`CommitWatcher` notices commits to the store's database file, from this process
(through the store's database object) and from others (SQLite's ``data_version``), and
yields once per batch of them; the service's trigger loop then looks at the queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from .._changelog import ChangeOrigin
from .._database import Database
from .._exceptions import StoreClosedError
from .._watch import ChangeStream

__all__ = ["ChangeSource", "CommitWatcher"]


@runtime_checkable
class ChangeSource(Protocol):
    """Tells the service that something may have been committed to the database."""

    def changes(self) -> AsyncIterator[None]:
        """Yield once per wake-up (several commits may share one); ends when closed."""
        ...

    def close(self) -> None:
        """Stop; the iterator ends."""
        ...


class CommitWatcher:
    """Wakes on local commits: writes through the same database object at once, commits of
    other connections and processes within ``poll_interval`` seconds (SQLite's
    ``data_version``), by following the store's change log. Changes that sync runs applied
    (pulled from the remote) do not count.

    Args:
        database: the store's database.
        poll_interval: seconds between checks for other processes' commits.
    """

    def __init__(self, database: Database, *, poll_interval: float = 1.0) -> None:
        self._database = database
        self._poll_interval = poll_interval
        self._stream: ChangeStream | None = None
        self._closed = False

    async def changes(self) -> AsyncIterator[None]:
        """Yield after each batch of local commits."""
        if self._closed:
            return
        try:
            stream = ChangeStream(self._database, None, poll_interval=self._poll_interval)
        except StoreClosedError:
            return
        self._stream = stream
        with stream:
            async for change in stream:
                # Drain what is buffered: one wake-up per batch of commits.
                local = change.origin is ChangeOrigin.LOCAL
                while True:
                    more = stream.get(timeout=0)
                    if more is None:
                        break
                    local = local or more.origin is ChangeOrigin.LOCAL
                if local:
                    yield None

    def close(self) -> None:
        """Stop following the log."""
        self._closed = True
        if self._stream is not None:
            self._stream.close()
