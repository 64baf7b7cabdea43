"""Files: blobs and their transfers, queued and synced like any other write.

What an app uses (through :class:`~nexus_store.NexusStore`: ``attach``, ``attachments``,
``open_attachment``, ``detach``, ``upload``, ``uploads``, ``cancel_uploads``,
``configure_files``):

- :class:`Attachment`: a reference to a blob (SHA-256, size, type, name), storable in a
  model field; :class:`Upload`, :class:`UploadState`: an upload as listed.
- :class:`FilePolicy`, :class:`TransferConstraints`: when and how files move (constraints
  per op and per priority, large files, parallel transfers, chunk size, retry schedule,
  cache limit); :data:`Prefetch`: which attachments of pulled records are fetched at once.
- :class:`FolderWatch`: a watched folder whose new and changed files are uploaded.

Inside, one module per concept: the local blob store (:mod:`._local`), the tables
(:mod:`._tables`), transfer ops (:mod:`._ops`), records waiting for their blobs
(:mod:`._holds`), the blob endpoints of a backend (:mod:`._remote`), the tus client
(:mod:`._tus_upload`), downloads (:mod:`._download`), multipart POSTs (:mod:`._post`),
a database's transfers as a sync run carries them out (:mod:`._transfers`).

Imports run downward only: files uses the queue, the backends, the server's blob
service (for in-process backends), the device room and the foundations; the sync engine,
the store, the command line and the benchmark tool use files. Parts that need httpx or
watchfiles load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._policy import FilePolicy, Prefetch, TransferConstraints
from ._refs import Attachment, Upload, UploadState

if TYPE_CHECKING:  # pragma: no cover
    from ._transfers import FileTransfers
    from ._watch import FolderWatch

_LAZY = {"FileTransfers": "._transfers", "FolderWatch": "._watch"}

__all__ = [
    "Attachment",
    "FilePolicy",
    "FileTransfers",
    "FolderWatch",
    "Prefetch",
    "TransferConstraints",
    "Upload",
    "UploadState",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
