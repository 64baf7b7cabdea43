"""What the parts of :class:`~nexus_store.NexusStore` share: its type variables, state, checks.

The store is one class built from parts, one module each: reading (:mod:`._store_reads`),
its side of a sync run (:mod:`._store_sync`), opening a file (:mod:`._store_open`), and
the class itself with its writes and lifecycle (:mod:`._store`). :class:`_StoreBase`
declares the state they share (set by ``NexusStore.__init__``) and the properties.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic

from pydantic import BaseModel
from typing_extensions import TypeVar

from ._changelog import ChangeLog
from ._clock import Clock
from ._database import Database
from ._exceptions import StoreClosedError
from ._hlc import HybridLogicalClock
from ._local import LocalTable
from ._meta import MetaTable
from ._remote import RemoteBackend
from ._watch import ChangeSignal, ChangeStream
from .queue import PrioritySyncQueue

if TYPE_CHECKING:
    pass


__all__: list[str] = []

T = TypeVar("T", bound=BaseModel)
# A default (PEP 696) lets NexusStore("app.db", model=Note) type-check without naming ID.
ID = TypeVar("ID", default=Any)


class _StoreBase(Generic[T, ID]):
    """The state and properties every part of a store reads."""

    model: type[T]
    collection: str
    id_field: str
    backend: RemoteBackend | None
    owns_backend: bool
    coalesce: bool
    schema_version: int
    clock: Clock
    _owns_db: bool
    _db: Database
    _closed: bool
    _signal: ChangeSignal
    _streams: weakref.WeakSet[ChangeStream]
    _streams_lock: threading.Lock
    _table: LocalTable[T]
    _meta: MetaTable
    _log: ChangeLog
    _hlc: HybridLogicalClock
    _queue: PrioritySyncQueue

    @property
    def queue(self) -> PrioritySyncQueue:
        """The priority sync queue this store's writes go to (shared by the whole file)."""
        return self._queue

    @property
    def database(self) -> Database:
        """The database connection the store, its queue and its change log share."""
        return self._db

    @property
    def path(self) -> str:
        """The database file path (or ``":memory:"``)."""
        return self._db.path

    @property
    def closed(self) -> bool:
        """Whether :meth:`~nexus_store.NexusStore.close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self._db.path}: the {self.collection!r} store is closed")
