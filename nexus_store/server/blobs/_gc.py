"""Garbage collection of blobs nothing refers to: the references come from the tenant's
records as the server holds them (every object with a ``sha256`` and a ``size``, see
:func:`~nexus_store._blob_api.blob_refs`), the deleting from
:meth:`~nexus_store.server.blobs.BlobService.collect_garbage` (which keeps blobs younger
than ``grace``: their records may still be on their way)."""

from __future__ import annotations

from typing import Any

from ..._blob_api import blob_refs
from ._service import BlobService, GarbageReport

__all__ = ["collect_unreferenced_blobs"]

_MAX_PAGES = 10_000_000


async def collect_unreferenced_blobs(
    core: Any, service: BlobService, tenant: str, *, grace: float = 86_400.0, page: int = 500
) -> GarbageReport:
    """Delete the tenant's blobs that no record of the server refers to.

    Args:
        core: the server core (anything with ``pull(tenant, cursor, limit)``).
        service: the tenant's blob service.
        tenant: whose blobs.
        grace: seconds a blob is kept after it was stored even if nothing refers to it.
        page: changes read per pull.

    Returns:
        What was deleted (blobs, bytes, abandoned uploads).
    """
    referenced: set[str] = set()
    cursor = 0
    for _ in range(_MAX_PAGES):
        changes = await core.pull(tenant, cursor, page)
        for change in changes.changes:
            if not change.deleted and change.data is not None:
                referenced |= blob_refs(change.data)
        cursor = changes.cursor
        if not changes.has_more:
            break
    return await service.collect_garbage(tenant, referenced, grace=grace)
