"""The server's files: blob storage (a folder, memory, S3), the tus endpoints and their rules.

- :class:`BlobStorage`: the seam (blobs by hash, uploads by id, per tenant);
  :class:`FileBlobStorage`, :class:`MemoryBlobStorage`, :class:`S3BlobStorage` (loaded on
  first use; needs ``nexus-store[s3]``); :func:`open_blob_storage` picks one by URL.
- :class:`BlobService`: uploads (tus 1.0: creation, offsets, checksums, termination),
  SHA-256 verification before a blob becomes visible, limits and quotas
  (:class:`BlobLimits`), reads, garbage collection
  (:func:`collect_unreferenced_blobs`: of the blobs no record of the server refers to).
- :func:`blob_routes`: the HTTP endpoints (see :mod:`nexus_store._blob_api`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._base import BlobInfo, BlobStorage, ChunkRejectedError, UploadInfo, tenant_key
from ._fs import FileBlobStorage
from ._gc import collect_unreferenced_blobs
from ._memory import MemoryBlobStorage
from ._open import default_blob_url, in_process_blobs, open_blob_storage
from ._rules import BlobLimits, BlobRefusedError
from ._service import BlobService, GarbageReport

if TYPE_CHECKING:  # pragma: no cover
    from ._routes import blob_routes
    from ._s3 import S3BlobStorage

_LAZY = {"S3BlobStorage": "._s3", "blob_routes": "._routes"}

__all__ = [
    "BlobInfo",
    "BlobLimits",
    "BlobRefusedError",
    "BlobService",
    "BlobStorage",
    "ChunkRejectedError",
    "FileBlobStorage",
    "GarbageReport",
    "MemoryBlobStorage",
    "S3BlobStorage",
    "UploadInfo",
    "blob_routes",
    "collect_unreferenced_blobs",
    "default_blob_url",
    "in_process_blobs",
    "open_blob_storage",
    "tenant_key",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
