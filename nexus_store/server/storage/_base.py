"""The storage seam under the server core: what every storage implements.

A storage keeps three things per tenant: the items' latest states (live or tombstone),
the record of every op id it has answered, and the tenant's change counter (``head``).
It does no deciding: :meth:`Storage.apply` reads what a batch touches inside one
transaction, hands it to the core's pure planner, and writes back what the plan says.

Implementations: :class:`~nexus_store.server.storage.MemoryStorage` (``memory://``),
:class:`~nexus_store.server.storage.SqliteStorage` (``sqlite:///relative.db`` or
``sqlite:////absolute.db``) and :class:`~nexus_store.server.storage.PostgresStorage`
(``postgresql://...``); :func:`~nexus_store.server.storage.open_storage` picks one by URL.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BatchPlan",
    "BatchState",
    "ItemKey",
    "OpRecord",
    "Planner",
    "Storage",
    "StoredItem",
]

ItemKey = tuple[str, str]
"""``(collection, item_key)`` where ``item_key`` is the item id as canonical JSON
(``'"abc"'`` for a string id, ``'42'`` for an integer), so both id types round-trip."""


@dataclass(slots=True)  # treated as immutable; not frozen, which is 4x slower to build
class StoredItem:
    """An item's latest state as stored (``data`` is msgpack; ``None`` for a tombstone)."""

    collection: str
    item_key: str
    version: int
    deleted: bool
    data: bytes | None
    hlc: str
    schema_version: int
    writer: int | None = None
    """Who made this state: the id of the sync run that pushed it, if it said (see
    :meth:`Storage.changes`, ``skip_writer``)."""

    @property
    def key(self) -> ItemKey:
        """The item's key within its tenant."""
        return (self.collection, self.item_key)


@dataclass(slots=True)
class OpRecord:
    """What the server answered for an op id: its payload fingerprint and its result."""

    op_id: str
    fingerprint: bytes
    version: int | None
    """For a plain acceptance (most ops): the version it produced; ``result`` is then ``None``."""
    result: bytes | None
    """Any other answer, encoded (see :func:`~nexus_store.server._rules.answer_of`)."""


@dataclass(frozen=True, slots=True)
class BatchState:
    """What a storage reads for a batch, inside the batch's transaction."""

    head: int
    """The tenant's latest change sequence (0 if it has none)."""
    items: Mapping[ItemKey, StoredItem]
    """The current state of every requested key that exists."""
    records: Mapping[str, OpRecord]
    """The records of every requested op id seen before."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What a storage writes for a batch, in the same transaction, and what it answers."""

    results: list[dict[str, Any]]
    """One answer per op, in order: the fields of an :class:`~nexus_store.backends.OpResult`."""
    writes: list[StoredItem]
    """New item states, at most one per key (each with a fresh version)."""
    records: list[OpRecord]
    """Op ids answered for the first time."""
    head: int
    """The tenant's new change counter (unchanged if nothing was written)."""


Planner = Callable[[BatchState], BatchPlan]
"""The core's decision for one batch: a pure function of what the storage read."""


class Storage(abc.ABC):
    """Where a server core keeps its tenants' data.

    Every method is safe to call concurrently. Storage failures are raised as
    :class:`~nexus_store.RemoteError` subclasses (retryable when trying again may work).
    """

    async def open(self) -> None:  # noqa: B027 - most storages are ready once constructed
        """Connect and create the schema if missing. Idempotent; called before first use."""

    @abc.abstractmethod
    async def apply(
        self,
        tenant: str,
        keys: Sequence[ItemKey],
        op_ids: Sequence[str],
        plan: Planner,
        *,
        writer: int | None = None,
    ) -> BatchPlan:
        """Run one batch in one transaction.

        Read the tenant's head, the records of ``op_ids`` and the items at ``keys``, while
        holding the tenant's write lock (so concurrent batches of a tenant, from any
        process, serialize); call ``plan`` once with them; write the plan's items (with
        ``writer``), records and head; commit; return the plan.
        """

    @abc.abstractmethod
    async def changes(
        self,
        tenant: str,
        cursor: int,
        limit: int,
        collections: Sequence[str] | None,
        *,
        skip_writer: int | None = None,
        upto: int | None = None,
    ) -> list[StoredItem]:
        """Return up to ``limit`` items with ``version > cursor``, ordered by version.

        ``skip_writer`` leaves out items whose latest state that writer made; ``upto``
        leaves out versions above it.
        """

    @abc.abstractmethod
    async def head(self, tenant: str) -> int:
        """Return the tenant's latest change sequence (0 if none)."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections. Idempotent."""
