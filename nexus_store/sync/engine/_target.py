"""The local side of a sync run: what a collection must offer to be synced.

A :class:`SyncTarget` is one collection's queue, database and bookkeeping (acks, server
versions, pulled changes, the pull cursor): a :class:`~nexus_store.NexusStore`, or a
:class:`~nexus_store.sync.engine.RawCollection` of a file opened without its model. A
:class:`ClockedTarget` also hears what the server's clock said.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..._database import Database
from ..._hlc import ClockReading
from ..._remote import Change
from ...queue import PrioritySyncQueue

__all__ = ["SyncTarget"]


@runtime_checkable
class SyncTarget(Protocol):
    """The local side of one collection, as a sync run sees it.

    :class:`~nexus_store.NexusStore` is one; :class:`~nexus_store.sync.engine.RawCollection`
    is one that needs no model (for the command line and workers).
    """

    @property
    def collection(self) -> str:
        """The collection (table) name; also the name its ops are queued under."""
        ...

    @property
    def queue(self) -> PrioritySyncQueue:
        """The queue holding this collection's ops."""
        ...

    @property
    def database(self) -> Database:
        """The database of the table and the queue (acks commit in one transaction)."""
        ...

    def apply_ack(self, item_id: str | int, version: int) -> bool:
        """Record the server version of an item whose op was acknowledged."""
        ...

    def apply_acks(self, acks: Iterable[tuple[str | int, int]]) -> int:
        """:meth:`apply_ack` for many ``(item_id, version)`` pairs at once."""
        ...

    def apply_remote_changes(
        self, changes: Iterable[Change], *, overwrite_pending: bool = False
    ) -> list[Change]:
        """Apply remote changes, never over an item with a pending op; return those applied."""
        ...

    def pull_cursor(self) -> int:
        """The stored pull cursor of this collection."""
        ...

    def set_pull_cursor(self, cursor: int) -> None:
        """Store the pull cursor (joining the caller's transaction)."""
        ...


@runtime_checkable
class ClockedTarget(Protocol):
    """A sync target with a clock that observes the server's (a store)."""

    def observe_server_clock(self, reading: ClockReading) -> float | None:
        """Observe the server's clock; return the local clock's skew if beyond the bound."""
        ...
