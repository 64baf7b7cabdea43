"""In-process storage: dictionaries behind one lock, gone when the process ends.

It is a real storage (the same planner, the same records, encoded data), so
:class:`~nexus_store.backends.MemoryBackend` behaves like a server would. A batch runs
entirely under a :class:`threading.Lock` without awaiting, which is its transaction;
the lock also makes it safe to share between event loops in different threads.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio.lowlevel

from ..._exceptions import LifecycleError
from ._base import BatchPlan, BatchState, ItemKey, OpRecord, Planner, Storage, StoredItem

__all__ = ["MemoryStorage"]


@dataclass
class _Tenant:
    head: int = 0
    items: dict[ItemKey, StoredItem] = field(default_factory=dict)
    records: dict[str, OpRecord] = field(default_factory=dict)
    by_version: dict[int, ItemKey] = field(default_factory=dict)
    """Live versions only: a superseded version is removed when its item changes."""
    versions: list[int] = field(default_factory=list)
    """Every version written, ascending; superseded ones are skipped and compacted away."""

    def add(self, item: StoredItem) -> None:
        old = self.items.get(item.key)
        if old is not None:
            del self.by_version[old.version]
        self.items[item.key] = item
        self.by_version[item.version] = item.key
        self.versions.append(item.version)
        if len(self.versions) > 2 * len(self.by_version) + 64:
            self.versions = [v for v in self.versions if v in self.by_version]


class MemoryStorage(Storage):
    """Keeps every tenant's items, op records and counter in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._closed = False

    def _tenant(self, name: str, *, create: bool = False) -> _Tenant:
        if self._closed:
            raise LifecycleError("the memory storage is closed")
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = _Tenant()
            if create:
                self._tenants[name] = tenant
        return tenant

    async def apply(
        self,
        tenant: str,
        keys: Sequence[ItemKey],
        op_ids: Sequence[str],
        plan: Planner,
        *,
        writer: int | None = None,
    ) -> BatchPlan:
        """Plan and apply one batch atomically."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            data = self._tenant(tenant, create=True)
            state = BatchState(
                head=data.head,
                items={k: data.items[k] for k in keys if k in data.items},
                records={i: data.records[i] for i in op_ids if i in data.records},
            )
            result = plan(state)
            for item in sorted(result.writes, key=lambda w: w.version):
                item.writer = writer
                data.add(item)
            for record in result.records:
                data.records[record.op_id] = record
            data.head = result.head
            return result

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
        """Items changed after ``cursor``, in version order."""
        await anyio.lowlevel.checkpoint()
        wanted = None if collections is None else frozenset(collections)
        out: list[StoredItem] = []
        with self._lock:
            data = self._tenant(tenant)
            versions = data.versions
            for index in range(bisect.bisect_right(versions, cursor), len(versions)):
                version = versions[index]
                if upto is not None and version > upto:
                    break
                key = data.by_version.get(version)
                if key is None or (wanted is not None and key[0] not in wanted):
                    continue
                item = data.items[key]
                if skip_writer is not None and item.writer == skip_writer:
                    continue
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    async def head(self, tenant: str) -> int:
        """The tenant's counter."""
        await anyio.lowlevel.checkpoint()
        with self._lock:
            return self._tenant(tenant).head

    async def aclose(self) -> None:
        """Drop everything. Idempotent."""
        with self._lock:
            self._closed = True
            self._tenants.clear()
