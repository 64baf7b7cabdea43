"""The storage seam under the server core, and :func:`open_storage` to pick one by URL.

A storage keeps three things per tenant: the items' latest states (live or tombstone),
the record of every op id it has answered, and the tenant's change counter (``head``).
It does no deciding: :meth:`Storage.apply` reads what a batch touches inside one
transaction, hands it to the core's pure planner, and writes back what the plan says.

Implementations: :class:`~nexus_store.server._storage_memory.MemoryStorage`
(``memory://``), :class:`~nexus_store.server._storage_sqlite.SqliteStorage`
(``sqlite:///relative.db`` or ``sqlite:////absolute.db``) and
:class:`~nexus_store.server._storage_postgres.PostgresStorage` (``postgresql://...``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._database import Durability

__all__ = [
    "BatchPlan",
    "BatchState",
    "ItemKey",
    "OpRecord",
    "Planner",
    "Storage",
    "StoredItem",
    "open_storage",
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
    """Any other answer, encoded (see :func:`~nexus_store.server._core.answer_of`)."""


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
        self, tenant: str, keys: Sequence[ItemKey], op_ids: Sequence[str], plan: Planner
    ) -> BatchPlan:
        """Run one batch in one transaction.

        Read the tenant's head, the records of ``op_ids`` and the items at ``keys``, while
        holding the tenant's write lock (so concurrent batches of a tenant, from any
        process, serialize); call ``plan`` once with them; write the plan's items, records
        and head; commit; return the plan.
        """

    @abc.abstractmethod
    async def changes(
        self, tenant: str, cursor: int, limit: int, collections: Sequence[str] | None
    ) -> list[StoredItem]:
        """Return up to ``limit`` items with ``version > cursor``, ordered by version."""

    @abc.abstractmethod
    async def head(self, tenant: str) -> int:
        """Return the tenant's latest change sequence (0 if none)."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections. Idempotent."""


def open_storage(url: str) -> Storage:
    """Make the storage a URL names.

    Args:
        url: ``"memory://"``; ``"sqlite:///relative/path.db"`` or
            ``"sqlite:////absolute/path.db"`` (SQLAlchemy's convention), with an optional
            ``?durability=normal`` (``full`` by default: an acknowledged push survives
            power loss); or ``"postgresql://..."`` (any libpq URI; ``postgres://`` too).

    Raises:
        ValueError: the URL names no known storage or is malformed.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a storage URL (expected scheme://...): {url!r}")
    if scheme == "memory":
        from ._storage_memory import MemoryStorage  # noqa: PLC0415 - load the chosen one only

        return MemoryStorage()
    if scheme == "sqlite":
        path, durability = _sqlite_target(url)
        from ._storage_sqlite import SqliteStorage  # noqa: PLC0415

        return SqliteStorage(path, durability=durability)
    if scheme in ("postgresql", "postgres"):
        from ._storage_postgres import PostgresStorage  # noqa: PLC0415

        return PostgresStorage(url)
    raise ValueError(f"unknown storage scheme {scheme!r} in {url!r}")


def _sqlite_target(url: str) -> tuple[str, Durability]:
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"an SQLite URL has no host: use sqlite:///relative or sqlite:////abs: {url!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"an SQLite URL needs a file path: {url!r}")
    durability: Durability = "full"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "durability" or value not in ("full", "normal"):
            raise ValueError(f"unknown SQLite URL option {name}={value!r} (durability=full|normal)")
        durability = "full" if value == "full" else "normal"
    return path, durability
