"""Where the server keeps its data: the storage seam, its three implementations, the opener.

- :class:`Storage`: the seam under the server core (items, answered op ids, change
  counters per tenant); it stores, the core decides.
- :class:`MemoryStorage` (``memory://``), :class:`SqliteStorage` (``sqlite:///path.db``),
  :class:`PostgresStorage` (``postgresql://...``; needs ``nexus-store[postgres]``).
- :func:`open_storage`: the one a URL names.

Imports run one way: each implementation imports the seam (``_base``), and the opener
imports the implementations, each only when its URL is opened. SQLite and PostgreSQL
storage load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._base import Storage
from ._memory import MemoryStorage
from ._open import open_storage

if TYPE_CHECKING:  # pragma: no cover
    from ._postgres import PostgresStorage
    from ._sqlite import SqliteStorage

_LAZY = {"PostgresStorage": "._postgres", "SqliteStorage": "._sqlite"}

__all__ = ["MemoryStorage", "PostgresStorage", "SqliteStorage", "Storage", "open_storage"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
